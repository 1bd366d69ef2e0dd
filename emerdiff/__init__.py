"""EmerDiff: pixel-level segmentation from Stable Diffusion's own features, no training.

    from emerdiff import EmerDiffSegmenter, EmerDiffConfig
    segmenter = EmerDiffSegmenter.from_pretrained("CompVis/stable-diffusion-v1-4")
    result = segmenter.segment(image)        # result.labels: H x W ids in 0..K-1

SegmentCLIP and Vocabulary name the segments (docs/method.md, "Names for segments").

docs/method.md describes the method step by step, with every parameter and default.
"""

from emerdiff.config import EmerDiffConfig
from emerdiff.naming import Vocabulary
from emerdiff.segmentation import Segment, Segmentation

__all__ = ["EmerDiffConfig", "EmerDiffSegmenter", "ModelLoadError", "Segment", "SegmentCLIP", "Segmentation", "Vocabulary"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # The segmenter and CLIP pull in torch and diffusers; keep `import emerdiff` light for tools that
    # only read results.
    if name in ("EmerDiffSegmenter", "ModelLoadError"):
        from emerdiff import segmenter

        return getattr(segmenter, name)
    if name == "SegmentCLIP":
        from emerdiff.clip import SegmentCLIP

        return SegmentCLIP
    raise AttributeError(f"module 'emerdiff' has no attribute {name!r}")
