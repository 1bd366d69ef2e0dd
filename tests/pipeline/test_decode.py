"""Bytes to pictures: every bad sample becomes a reason, never a stopped shard."""

import io

from PIL import Image
import pytest

from pipeline.decode import MISSING_IMAGE, TOO_LARGE, UNDECODABLE, UNSUPPORTED, SampleError, decode_image, decode_samples


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
