"""Out of device memory: the chunk that failed is halved, down to 1, and stays halved; the image is not lost.

CUDA raises ``torch.OutOfMemoryError`` when an allocation fails; here a stage raises it whenever
it is given more rows than a pretend device can hold, as a GPU with less free memory than planned
would.
"""

import logging

import numpy as np
import pytest
import torch
from map_agreement import assert_labels_agree

from emerdiff import EmerDiffSegmenter
from emerdiff.denoising import Denoiser
from emerdiff.images import to_rgb


class SmallDevice:
    """Makes the UNet and the VAE decoder raise out-of-memory above a batch size, and counts the raises."""

    def __init__(self, monkeypatch, unet_rows: int, decode_rows: int):
        self.raised = {"unet": 0, "decode": 0}
        unet = Denoiser._unet

        def limited_unet(denoiser, latents, timestep):
            self._check("unet", latents.shape[0], unet_rows)
            return unet(denoiser, latents, timestep)

        monkeypatch.setattr(Denoiser, "_unet", limited_unet)
        self.unet_rows, self.decode_rows = unet_rows, decode_rows

    def limit_decodes(self, segmenter) -> None:
        decode = segmenter.vae.decode

        def limited_decode(latents, **kwargs):
            self._check("decode", latents.shape[0], self.decode_rows)
            return decode(latents, **kwargs)

        segmenter.vae.decode = limited_decode

    def _check(self, kind: str, rows: int, limit: int) -> None:
        if rows > limit:
            self.raised[kind] += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {rows} rows (simulated: {limit} fit)")


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config.replace(feature_samples=4, kmeans_restarts=2, chunk_size=8)


@torch.inference_mode()
def _difference_maps(segmenter, image, lowres):
    masks = segmenter._token_masks(torch.from_numpy(lowres), segmenter.config.num_masks)
    return segmenter._difference_maps(segmenter._encode([to_rgb(image)]), masks)


def test_the_failing_chunk_is_halved_until_it_fits_and_stays_so(tiny_model, config, photos, monkeypatch, caplog):
    device = SmallDevice(monkeypatch, unet_rows=2, decode_rows=1)
    segmenter = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")
    device.limit_decodes(segmenter)

    with caplog.at_level(logging.WARNING, logger="emerdiff.planning"):
        result = segmenter.segment(photos["coffee"])

    assert (segmenter.chunks.unet, segmenter.chunks.decode) == (2, 1)  # 8 -> 4 -> 2, and 8 -> 4 -> 2 -> 1
    assert device.raised == {"unet": 2, "decode": 3}
    assert [record.getMessage() for record in caplog.records] == [
        f"out of device memory at {kind} chunk {size}: continuing at {size // 2} for the rest of this segmenter's life"
        for kind, size in [("unet", 8), ("unet", 4), ("decode", 8), ("decode", 4), ("decode", 2)]]
    # The plan is what it was; what the stages use is smaller for good: the next image raises nothing.
    assert (segmenter.memory_plan.chunk_size, segmenter.memory_plan.decode_chunk) == (8, 8)
    second = segmenter.segment(photos["chelsea"])
    assert device.raised == {"unet": 2, "decode": 3} and second.num_segments >= 1

    # The image was not lost: the same labels as a segmenter planned at those chunks from the start.
    monkeypatch.undo()
    small = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config.replace(chunk_size=2), device="cpu")
    expected = small.segment(photos["coffee"])
    np.testing.assert_array_equal(result.lowres_labels, expected.lowres_labels)
    assert_labels_agree(result.labels, expected.labels, _difference_maps(segmenter, photos["coffee"], result.lowres_labels),
                        _difference_maps(small, photos["coffee"], result.lowres_labels))


def test_out_of_memory_at_chunk_1_reaches_the_caller(tiny_model, config, photos, monkeypatch):
    device = SmallDevice(monkeypatch, unet_rows=0, decode_rows=0)
    segmenter = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")
    with pytest.raises(torch.OutOfMemoryError, match="simulated"):
        segmenter.segment(photos["coffee"])
    assert segmenter.chunks.unet == 1 and device.raised["unet"] == 4  # 8, 4, 2 and 1 rows each tried once
