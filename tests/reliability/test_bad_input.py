"""Hostile and odd samples in real shards, through the whole job: each is a row with a reason, never a lost shard.

Unit-level decoding cases (missing member, float images, header-only size check) are in
tests/pipeline/test_decode.py; here the same shard carries them all, end to end.
"""

import io
from collections import Counter

import numpy as np
import pytest
from label_helpers import write_shards
from PIL import Image, ImageFile

from pipeline.config import LabelJobConfig
from pipeline.driver import run_job
from schemas.labels import decode_label_png
from schemas.reading import iter_rows, read_manifest

MAX_PIXELS = 1_000_000
BOMB_SIZE = (2000, 1000)  # 2 MP of one colour: a few kB as PNG, refused from its header


def _encode(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def _picture(mode: str = "RGB", size=(48, 32)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return _encode(_picture(size=(48, 32)), "JPEG", exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [_picture("P"), _picture("P").rotate(90)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_with_transparency() -> bytes:
    image = _picture("P")
    return _encode(image, "PNG", transparency=0)


# key -> (member, bytes builder, expected: ("ok", (width, height)) or ("error", reason))
CASES = {
    "not-an-image": ("jpg", lambda jpg: b"<html>403 Forbidden</html>", ("error", "undecodable image")),
    "zero-bytes": ("jpg", lambda jpg: b"", ("error", "undecodable image")),
    "truncated-jpeg": ("jpg", lambda jpg: jpg[: len(jpg) // 2], ("error", "undecodable image")),
    "cmyk-jpeg": ("jpg", lambda jpg: _encode(_picture("CMYK"), "JPEG"), ("ok", (48, 32))),
    "png-16-bit": ("png", lambda jpg: _encode(Image.fromarray(np.full((32, 48), 40000, np.uint16)), "PNG"), ("ok", (48, 32))),
    "palette-transparent": ("png", lambda jpg: _palette_with_transparency(), ("ok", (48, 32))),
    "rgba": ("png", lambda jpg: _encode(_picture("RGBA"), "PNG"), ("ok", (48, 32))),
    "grayscale": ("jpg", lambda jpg: _encode(_picture("L"), "JPEG"), ("ok", (48, 32))),
    "exif-rotated": ("jpg", lambda jpg: _exif_rotated(), ("ok", (32, 48))),  # labels follow the displayed picture
    "animated-gif": ("gif", lambda jpg: _animated_gif(), ("ok", (48, 32))),
    "webp": ("webp", lambda jpg: _encode(_picture(), "WEBP"), ("ok", (48, 32))),
    "one-pixel": ("png", lambda jpg: _encode(_picture(size=(1, 1)), "PNG"), ("ok", (1, 1))),
    "one-by-10000": ("png", lambda jpg: _encode(_picture(size=(1, 10000)), "PNG"), ("ok", (1, 10000))),
    "decompression-bomb": ("png", lambda jpg: _encode(Image.new("L", BOMB_SIZE), "PNG"), ("error", "image too large")),
    "dir/sub/nested": ("jpg", lambda jpg: jpg, ("ok", (96, 64))),  # a key with path separators is just a key
    "../../escape": ("jpg", lambda jpg: jpg, ("ok", (96, 64))),
}


@pytest.fixture(scope="module")
def odd_shard_run(tmp_path_factory, tiny_model, fast_config, fast_segmenter, photo_jpegs):
    """One job over one shard holding every case (plus a normal photo); returns its rows by key."""
    root = tmp_path_factory.mktemp("odd")
    samples = [{"__key__": "normal", "jpg": photo_jpegs[0]}]
    samples += [{"__key__": key, member: build(photo_jpegs[1])} for key, (member, build, _) in CASES.items()]
    [url] = write_shards(str(root / "in"), {"odd.tar": samples})
    job = LabelJobConfig(inputs=(url,), output=str(root / "out"), model=str(tiny_model), method=fast_config,
                         executor="local", batch_size=2, max_attempts=1, max_image_pixels=MAX_PIXELS,
                         image_extensions=("jpg", "png", "webp", "gif"))
    decoded_sizes = []
    original_load = ImageFile.ImageFile.load

    def spying_load(image):
        decoded_sizes.append(image.size)
        return original_load(image)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFile.ImageFile, "load", spying_load)
        summary = run_job(job, segmenter=fast_segmenter)
    rows = list(iter_rows(job.output))
    return summary, rows, decoded_sizes, root / "out"


@pytest.mark.timeout(120)
def test_the_odd_shard_is_done_with_one_row_per_sample(odd_shard_run):
    summary, rows, _, output = odd_shard_run
    assert summary.exit_code == 0 and summary.labelled == 1
    assert Counter(row["key"] for row in rows) == Counter(["normal", *CASES])  # each exactly once
    assert [row["key"] for row in rows] == ["normal", *CASES]  # in input order
    assert read_manifest(str(output)).column("status").to_pylist() == ["done"]
    # Nothing was written outside the output folder for the keys that look like paths.
    assert sorted(p.name for p in output.parent.iterdir()) == ["in", "out"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", list(CASES))
def test_each_odd_sample_gets_a_result_or_a_reason(odd_shard_run, key):
    _, rows, _, _ = odd_shard_run
    [row] = [row for row in rows if row["key"] == key]
    status, expected = CASES[key][2]
    assert row["status"] == status, row["error"]
    if status == "error":
        assert row["error"].startswith(expected + ": ") and row["labels"] is None
        return
    assert row["error"] is None and (row["width"], row["height"]) == expected
    labels = decode_label_png(row["labels"]["bytes"])
    assert labels.shape == (expected[1], expected[0])
    assert set(np.unique(labels)) <= {segment["id"] for segment in row["segments"]}


@pytest.mark.timeout(60)
def test_a_decompression_bomb_is_refused_before_any_pixel_is_decoded(odd_shard_run):
    _, rows, decoded_sizes, _ = odd_shard_run
    [bomb] = [row for row in rows if row["key"] == "decompression-bomb"]
    assert f"{BOMB_SIZE[0]}x{BOMB_SIZE[1]}" in bomb["error"] and "--max-image-pixels" in bomb["error"]
    assert BOMB_SIZE not in decoded_sizes
    assert (48, 32) in decoded_sizes  # the spy did see the other pictures being decoded
