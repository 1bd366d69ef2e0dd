"""The generator stages: read-ahead and batched segmentation."""

from PIL import Image
import pytest

from pipeline.decode import decode_image
from pipeline.sources import ShardReadError
from pipeline.stages import BatchSegmenter, prefetch


def test_prefetch_keeps_order_reraises_and_stops_early():
    assert list(prefetch(iter(range(50)), size=3)) == list(range(50))

    def broken():
        yield 1
        raise ShardReadError("boom")

    with pytest.raises(ShardReadError, match="boom"):
        list(prefetch(broken(), size=2))

    produced = []

    def endless():
        for i in range(10**6):
            produced.append(i)
            yield i

    stream = prefetch(endless(), size=2)
    assert next(stream) == 0
    stream.close()
    assert len(produced) < 10  # the producer stopped instead of reading the whole input


class _FlakySegmenter:
    """Stands in for EmerDiffSegmenter's batch API: fails any batch holding the 'poison' image."""

    def __init__(self, fast_segmenter):
        self.real = fast_segmenter
        self.calls = []

    def segment_batch(self, images):
        self.calls.append(len(images))
        if any(image.size == (5, 5) for image in images):
            raise RuntimeError("kernel error on a 5x5 image")
        return self.real.segment_batch(images)


def test_a_failing_batch_costs_one_error_row_not_the_batch(fast_segmenter, photo_jpegs):
    from pipeline.decode import DecodedSample

    good = decode_image(photo_jpegs[1], 10**6)
    samples = [DecodedSample("a", good), DecodedSample("b", Image.new("RGB", (5, 5))), DecodedSample("c", None, "undecodable image: x")]
    segmenter = _FlakySegmenter(fast_segmenter)
    rows = list(BatchSegmenter(segmenter, batch_size=2, shard_url="u")(samples))
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "error"), ("c", "error")]
    assert rows[1]["error"].startswith("segmentation failed: kernel error")
    assert segmenter.calls == [2, 1, 1]  # the batch, then each image alone
    assert rows[0]["width"] == good.width and rows[0]["num_segments"] >= 1


class _BrokenDevice:
    """Stands in for EmerDiffSegmenter's batch API on a GPU: ``error`` for any batch holding a 5x5 image."""

    def __init__(self, fast_segmenter, error: Exception):
        self.real, self.error = fast_segmenter, error
        self.calls = []

    def segment_batch(self, images):
        self.calls.append(len(images))
        if any(image.size == (5, 5) for image in images):
            raise self.error
        return self.real.segment_batch(images)


def _samples(photo_jpegs):
    from pipeline.decode import DecodedSample

    good = decode_image(photo_jpegs[1], 10**6)
    return [DecodedSample("a", good), DecodedSample("b", Image.new("RGB", (5, 5))), DecodedSample("c", good)]


def test_a_cuda_fault_fails_the_shard_instead_of_becoming_error_rows(fast_segmenter, photo_jpegs):
    """After an illegal memory access every later kernel fails: rows for the rest would all be errors."""
    import torch

    fault = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    segmenter = _BrokenDevice(fast_segmenter, fault)
    rows = BatchSegmenter(segmenter, batch_size=3, shard_url="u")(_samples(photo_jpegs))
    with pytest.raises(torch.AcceleratorError, match="illegal memory access"):
        next(rows)
    assert segmenter.calls == [3]  # not retried image by image


def test_out_of_memory_at_the_smallest_chunks_costs_one_error_row(fast_segmenter, photo_jpegs):
    """The segmenter raises it only once its chunks are down to 1 (tests/emerdiff/test_out_of_memory.py)."""
    import torch

    segmenter = _BrokenDevice(fast_segmenter, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 7.50 GiB"))
    rows = list(BatchSegmenter(segmenter, batch_size=3, shard_url="u")(_samples(photo_jpegs)))
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "error"), ("c", "ok")]
    assert rows[1]["error"] == "out of device memory: CUDA out of memory. Tried to allocate 7.50 GiB"
    assert segmenter.calls == [3, 1, 1, 1]
