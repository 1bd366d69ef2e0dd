"""Odd inputs become a correct RGB picture or a clear ValueError (issue 2, 'Odd inputs')."""

import io

import numpy as np
import pytest
from PIL import Image

from emerdiff.images import resize_labels, to_model_input, to_rgb


def _reloaded(image: Image.Image, fmt: str, **save) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_grayscale_and_palette_become_rgb_with_the_same_pixels():
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    assert np.array_equal(np.asarray(to_rgb(gray))[..., 1], np.asarray(gray))
    palette = gray.convert("P")
    assert to_rgb(palette).mode == "RGB"


def test_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[1, 1] = (255, 0, 0, 0)  # fully transparent becomes white
    rgb = np.asarray(to_rgb(rgba))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[1, 1]) == (255, 255, 255)
    palette_with_transparency = _reloaded(Image.fromarray(rgba[..., :3]).convert("P"), "PNG", transparency=0)
    assert to_rgb(palette_with_transparency).mode == "RGB"


def test_sixteen_bit_is_scaled_not_clipped():
    wide = np.array([[0, 65535], [32896, 257]], dtype=np.uint16)
    from_array = np.asarray(to_rgb(wide))[..., 0]
    assert from_array.tolist() == [[0, 255], [128, 1]]
    from_png = np.asarray(to_rgb(_reloaded(Image.fromarray(wide), "PNG")))[..., 0]
    assert from_png.tolist() == [[0, 255], [128, 1]]


def test_exif_orientation_is_applied():
    landscape = Image.new("RGB", (6, 2), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = _reloaded(landscape, "JPEG", exif=exif.tobytes())
    assert rotated.size == (6, 2)
    assert to_rgb(rotated).size == (2, 6)


def test_cmyk_is_converted():
    assert to_rgb(Image.new("CMYK", (3, 3))).mode == "RGB"


@pytest.mark.parametrize(
    "array, fragment",
    [
        (np.zeros((4, 4, 2), dtype=np.uint8), "HxW, HxWx1, HxWx3 or HxWx4"),
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8 or uint16"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "no pixels"),
        (np.zeros((2, 2, 2, 3), dtype=np.uint8), "HxW, HxWx1, HxWx3 or HxWx4"),
    ],
)
def test_unusable_arrays_are_refused_clearly(array, fragment):
    with pytest.raises(ValueError, match=fragment):
        to_rgb(array)


def test_non_images_are_refused_clearly():
    with pytest.raises(ValueError, match="expected a PIL image"):
        to_rgb("photo.jpg")
    with pytest.raises(ValueError, match="mode 'F'"):
        to_rgb(Image.new("F", (2, 2)))


def test_model_input_is_lanczos_resized_and_normalised():
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 30, 3), dtype=np.uint8))
    tensor = to_model_input(picture, 64)
    expected = np.asarray(picture.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.float32) / 127.5 - 1
    assert tensor.shape == (1, 3, 64, 64)
    assert np.allclose(tensor[0].permute(1, 2, 0).numpy(), expected)
    assert tensor.min() >= -1 and tensor.max() <= 1


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (300, 5), (64, 64), (1000, 1), (48, 96)])
def test_label_resize_matches_torch_nearest_exact(size):
    import torch

    labels = np.random.default_rng(1).integers(0, 200, (64, 64)).astype(np.int64)
    width, height = size
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(labels).double()[None, None], size=(height, width), mode="nearest-exact"
    )[0, 0].long().numpy()
    assert np.array_equal(resize_labels(labels, height, width), expected)


def test_label_resize_picks_the_pixel_under_each_centre():
    # 4 source columns to 7: centres at (i + 0.5) * 4/7 -> 0.29, 0.86, 1.43, 2.0, 2.57, 3.14, 3.71.
    row = np.array([[10, 11, 12, 13]])
    assert resize_labels(row, 1, 7).tolist() == [[10, 10, 11, 12, 12, 13, 13]]
