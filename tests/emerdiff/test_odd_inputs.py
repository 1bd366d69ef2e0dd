"""Odd images through the whole method: a valid segmentation at the original size or a clear ValueError."""

import io

import numpy as np
import pytest
from PIL import Image


def _jpeg_with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    "make, size",
    [
        (lambda p: Image.fromarray(p).convert("L"), (600, 400)),
        (lambda p: Image.fromarray(p).convert("RGBA"), (600, 400)),
        (lambda p: Image.fromarray(p).convert("P"), (600, 400)),
        (lambda p: (p[..., 0].astype(np.uint16) * 257), (600, 400)),
        (lambda p: Image.fromarray(p).convert("CMYK"), (600, 400)),
        (lambda p: p[:1, :1], (1, 1)),
        (lambda p: p[:2, :], (600, 2)),
    ],
    ids=["grayscale", "rgba", "palette", "16-bit", "cmyk", "1x1", "very-wide"],
)
def test_odd_images_get_labels_at_their_own_size(tiny_segmenter, photos, make, size):
    assert photos["coffee"].shape[:2] == (400, 600)
    result = tiny_segmenter.segment(make(photos["coffee"]))
    width, height = size
    assert result.labels.shape == (height, width)
    assert result.labels.max() < tiny_segmenter.config.num_masks
    assert result.area.sum() == width * height


def test_labels_follow_the_displayed_orientation(tiny_segmenter, photos):
    stored = Image.fromarray(photos["astronaut"][:, :256])  # 256 wide, 512 high as stored
    rotated = _jpeg_with_orientation(stored, 6)  # displayed 90 degrees clockwise: 512 wide, 256 high
    assert tiny_segmenter.segment(rotated).labels.shape == (256, 512)


def test_unusable_input_is_a_value_error_before_any_model_work(tiny_segmenter):
    with pytest.raises(ValueError, match="uint8 or uint16"):
        tiny_segmenter.segment(np.zeros((4, 4, 3), dtype=np.float64))
    with pytest.raises(ValueError, match="no pixels"):
        tiny_segmenter.segment(np.zeros((0, 3), dtype=np.uint8))


def test_upsample_sharpens_masks_from_elsewhere_at_any_grid(tiny_segmenter, photos):
    # A 2x2 caller map (coarser than the layer's 4x4 grid): four quadrant masks.
    result = tiny_segmenter.upsample(photos["chelsea"], np.array([[0, 1], [2, 3]]))
    assert result.num_masks == 4
    assert result.labels.shape == photos["chelsea"].shape[:2]
    assert result.lowres_labels.tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="non-negative integer ids"):
        tiny_segmenter.upsample(photos["chelsea"], np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"non-empty \(h, w\) array"):
        tiny_segmenter.upsample(photos["chelsea"], np.zeros(4, dtype=int))
