"""Input images: any PIL mode or array layout → one RGB picture, and back to the working square."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

# Modes whose pixels are wider than 8 bits: scaled down by their full range, not clipped.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0}


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """The picture as 8-bit RGB, as a viewer would show it.

    EXIF orientation is applied (labels follow the displayed image), transparency is composited
    over white, 16-bit data is scaled to 8 bits, and animations keep their first frame.
    Raises ValueError, naming the problem, for anything that is not a picture.
    """
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or an HxW(x1/3/4) array, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has no pixels ({image.width}x{image.height})")
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_MODES:
        pixels = np.asarray(image, dtype=np.float64) * (255.0 / _WIDE_MODES[image.mode])
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if image.mode == "F":
        raise ValueError("floating-point images (PIL mode 'F') have no defined display range; convert to 8 bits first")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"image has no pixels (shape {array.shape})")
    if array.dtype == np.uint16:
        array = np.rint(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"expected uint8 or uint16 pixels, got dtype {array.dtype}; scale floats to 0..255 uint8 first")
    # Pillow infers L / RGB / RGBA from the uint8 array's shape.
    return Image.fromarray(np.ascontiguousarray(array))


def to_model_input(image: Image.Image, resolution: int) -> torch.Tensor:
    """(1, 3, R, R) float32 in [-1, 1]: Lanczos resize to the working square, as the authors do (step 1)."""
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (R, R, 3)
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).unsqueeze(0)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour on pixel centres: source index floor((i + 0.5) * R / H) (determinism conventions).

    Integer arithmetic, so centres that fall exactly on a source pixel boundary take the later pixel,
    as torch's ``nearest-exact`` does (PIL's float arithmetic takes the earlier one there).
    """
    source_h, source_w = labels.shape
    rows = ((2 * np.arange(height) + 1) * source_h) // (2 * height)
    cols = ((2 * np.arange(width) + 1) * source_w) // (2 * width)
    return labels[rows[:, None], cols[None, :]]
