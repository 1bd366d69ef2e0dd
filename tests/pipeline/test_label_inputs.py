"""From input patterns to decoded pictures: expansion, streaming tars over fsspec, per-sample errors."""

import io
import uuid

import pytest
from PIL import Image

from label_helpers import tar_bytes, write_shards
from pipeline.config import LabelJobConfig
from pipeline.decode import MISSING_IMAGE, TOO_LARGE, UNDECODABLE, UNSUPPORTED, SampleError, decode_image, decode_samples
from pipeline.sources import ShardReadError, ShardStream, shard_info
from schemas.shards import expand_shards
from pipeline.stages import BatchSegmenter, prefetch


@pytest.fixture
def memory_dir():
    import fsspec

    root = f"memory:///inputs-{uuid.uuid4().hex[:8]}"  # memory:// lists its paths from "/"
    yield root
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def test_expand_inputs_braces_globs_and_order(memory_dir, make_samples):
    write_shards(memory_dir, {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(3)})
    braces = expand_shards([f"{memory_dir}/shard-{{000002..000000}}.tar"])
    assert [u.rsplit("/", 1)[-1] for u in braces] == ["shard-000002.tar", "shard-000001.tar", "shard-000000.tar"]
    globbed = expand_shards([f"{memory_dir}/shard-*.tar", f"{memory_dir}/shard-000000.tar"])
    assert globbed == [f"{memory_dir}/shard-{i:06d}.tar" for i in range(3)]  # sorted, duplicates dropped
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_shards([f"{memory_dir}/nothing-*.tar"])


def test_shard_stream_reads_object_store_urls_through_fsspec(memory_dir, make_samples):
    [url] = write_shards(memory_dir, {"shard-000000.tar": make_samples(0, 3)})
    stream = ShardStream(url)
    samples = list(stream)
    assert [s["__key__"] for s in samples] == ["s00-000", "s00-001", "s00-002"]
    assert set(samples[0]) >= {"jpg", "txt", "__url__"}
    assert stream.bytes_read > 0
    assert shard_info(url).size == len(tar_bytes(make_samples(0, 3)))


def test_truncated_or_missing_shards_fail_as_a_whole(memory_dir, make_samples):
    data = tar_bytes(make_samples(0, 3))
    [truncated] = write_shards(memory_dir, {"cut.tar": []})
    import fsspec

    fsspec.filesystem("memory").pipe_file(truncated.removeprefix("memory://"), data[: len(data) // 2 + 100])
    with pytest.raises(ShardReadError, match="cut.tar"):
        list(ShardStream(truncated))
    with pytest.raises(ShardReadError, match="does not exist"):
        shard_info(f"{memory_dir}/missing.tar")
    with pytest.raises(ShardReadError, match="missing.tar"):
        list(ShardStream(f"{memory_dir}/missing.tar"))


def test_pipe_inputs_need_an_explicit_flag():
    with pytest.raises(ValueError, match="--allow-pipe"):
        LabelJobConfig(inputs=("pipe:cat x.tar",), output="out")
    assert LabelJobConfig(inputs=("pipe:cat x.tar",), output="out", allow_pipe=True).allow_pipe


def test_job_config_validates_round_trips_and_hides_secrets():
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        LabelJobConfig(inputs=("a.tar",), output="o", batch_size=0)
    with pytest.raises(ValueError, match="accelerator"):
        LabelJobConfig(inputs=("a.tar",), output="o", accelerator="tpu")
    job = LabelJobConfig(inputs=("https://h/a.tar?sig=s3cr3t",), output="s3://u:p@b/o", max_attempts=5,
                         storage_options={"secret": "s3cr3t"})
    assert LabelJobConfig.from_dict(job.to_dict()) == job
    public = str(job.public_dict())
    assert "s3cr3t" not in public and "u:p" not in public and "storage_options" not in public


def _png(mode: str, size=(8, 6), **info) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="TIFF" if mode == "F" else "PNG", **info)
    return buffer.getvalue()


def test_decode_turns_every_bad_sample_into_a_reason(photo_jpegs):
    assert decode_image(photo_jpegs[0], max_pixels=10**6).mode == "RGB"
    assert decode_image(_png("LA"), 10**6).mode == "RGB"  # any displayable mode becomes RGB
    cases = {
        UNDECODABLE: (b"not an image", 10**6),
        TOO_LARGE: (photo_jpegs[0], 100),  # refused from the header, before decoding
        UNSUPPORTED: (_png("F"), 10**6),
    }
    for reason, (data, limit) in cases.items():
        with pytest.raises(SampleError) as error:
            decode_image(data, limit)
        assert error.value.reason == reason and str(error.value).startswith(reason + ": ")
    truncated = photo_jpegs[0][: len(photo_jpegs[0]) // 2]
    with pytest.raises(SampleError, match=UNDECODABLE):
        decode_image(truncated, 10**6)


def test_decode_samples_keeps_order_and_reports_missing_members(photo_jpegs):
    samples = [{"__key__": "a", "jpg": photo_jpegs[0]}, {"__key__": "b", "txt": b"x", "json": b"{}"},
               {"__key__": "c", "png": _png("RGB")}]
    decoded = list(decode_samples(samples, ("jpg", "png"), 10**6))
    assert [d.key for d in decoded] == ["a", "b", "c"]
    assert decoded[0].image is not None and decoded[2].image is not None
    assert decoded[1].error.startswith(MISSING_IMAGE) and ".json" in decoded[1].error


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
