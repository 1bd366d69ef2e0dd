"""The fast path against the slow reference (emerdiff/reference.py): same labels on >= 0.999 of pixels, fp32.

The two share nothing but the loaded weights: different attention code, batching, scheduler
arithmetic and blur. Both run in fp32 but sum in different orders, so their difference maps differ
by a little; a pixel may take another label only where the reference's best two maps are closer
than that difference.
"""

import numpy as np
import pytest
import torch
from map_agreement import assert_labels_agree

from emerdiff import EmerDiffSegmenter
from emerdiff.images import resize_labels, to_rgb
from emerdiff.reference import ReferenceEmerDiff


def _models(shape, tiny_model, config):
    """(fast segmenter, reference) on the same weights; the reference works on its own deep copy."""
    if shape == "tiny":
        segmenter = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")
    else:
        from benchmarks.models import random_parts

        segmenter = EmerDiffSegmenter(random_parts(shape), config, torch.device("cpu"), torch.float32)
    return segmenter, ReferenceEmerDiff.from_parts(segmenter._parts, config)


def _quadrants(side: int) -> np.ndarray:
    lowres = np.zeros((side, side), dtype=np.int64)
    lowres[: side // 2, side // 2 :] = 1
    lowres[side // 2 :, : side // 2] = 2
    lowres[side // 2 :, side // 2 :] = 3
    return lowres


@pytest.mark.parametrize(("shape", "replay"), [("tiny", "query_key"), ("tiny", "probabilities"), ("mid", "auto")])
def test_upsample_agrees_with_the_slow_reference(tiny_model, tiny_config, photos, shape, replay):
    config = tiny_config.replace(attention_replay=replay, feature_samples=2)
    segmenter, reference = _models(shape, tiny_model, config)
    image = photos["astronaut"]
    lowres = _quadrants(segmenter._modulation_side)

    fast = segmenter.upsample(image, lowres).labels
    reference_maps = reference.difference_maps(image, lowres)  # (K, R, R), blurred
    reference_labels = resize_labels(reference_maps.argmax(dim=0).numpy(), *fast.shape)
    assert np.array_equal(reference_labels, reference.upsample(image, lowres))
    with torch.inference_mode():
        masks = segmenter._token_masks(torch.from_numpy(lowres), 4)
        fast_maps = segmenter._difference_maps(segmenter._encode([to_rgb(image)]), masks)

    scale = float(reference_maps.amax())
    discrepancy = float((fast_maps - reference_maps).abs().amax())
    assert scale > 0 and discrepancy < 1e-3 * scale
    assert_labels_agree(fast, reference_labels, fast_maps, reference_maps)
    assert (fast == reference_labels).mean() >= 0.999
    assert len(np.unique(fast)) > 1

