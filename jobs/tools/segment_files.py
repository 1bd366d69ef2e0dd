"""``emerdiff segment``: a few image files in, per image a label PNG, a colour overlay and a JSON.

For each IMAGE: OUT/<stem>.labels.png (single-channel segment ids at the image's size, 16-bit when
there are more than 256 masks), OUT/<stem>.overlay.png and OUT/<stem>.json (segments, model and
config). An image that cannot be read or segmented is logged and counted; the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from emerdiff.images import to_rgb
from jobs.visualize import overlay
from pipeline.config import option

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SegmentFilesConfig:
    images: tuple[str, ...] = option(help="Image files (any format Pillow reads).", name="images", nargs="+", metavar="IMAGE")
    out: str = option(help="Folder for the results (created if missing).", metavar="DIR")

    def __post_init__(self) -> None:
        missing = [path for path in self.images if not Path(path).is_file()]
        if missing:
            raise ValueError(f"no such image file(s): {', '.join(missing)}")


def segment_files(segmenter, config: SegmentFilesConfig) -> int:
    """Segment every image and write its three files; returns how many images failed."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in config.images:
        try:
            write_result(segmenter, Path(path), out)
        except (ValueError, OSError, UnidentifiedImageError) as error:
            failures += 1
            logger.error("%s: %s", path, error)
    logger.info("wrote results for %d of %d image(s) to %s", len(config.images) - failures, len(config.images), out)
    return failures


def write_result(segmenter, path: Path, out: Path) -> None:
    with Image.open(path) as opened:
        picture = to_rgb(opened)
    result = segmenter.segment(picture)
    stem = out / path.stem
    Image.fromarray(result.labels.astype("uint8" if result.num_masks <= 256 else "uint16")).save(f"{stem}.labels.png")
    overlay(picture, result.labels).save(f"{stem}.overlay.png")
    summary = {
        "image": str(path),
        "width": picture.width,
        "height": picture.height,
        "num_segments": result.num_segments,
        "lowres_labels": result.lowres_labels.tolist(),
        "segments": [
            {"id": s.id, "area": s.area, "bbox": list(s.bbox), "score": round(s.score, 6)} for s in result.segments
        ],
        "model": segmenter.model_info["model"],
        "config": segmenter.config.to_dict(),
        "config_hash": segmenter.config.config_hash,
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2))
    logger.info("%s: %d segments -> %s.{labels,overlay}.png, %s.json", path, result.num_segments, stem, stem)
