"""Colours for label maps: a fixed palette, colourised maps and overlays, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, neighbours far apart in hue (golden-ratio steps), fixed forever."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 255, np.full(count, 170), np.full(count, 240)], axis=1).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv[None], mode="HSV").convert("RGB"))[0]


def colorize(labels: np.ndarray) -> Image.Image:
    return Image.fromarray(palette(int(labels.max(initial=0)) + 1)[labels])


def overlay(photo: Image.Image, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    colours = colorize(labels).resize(photo.size, Image.Resampling.NEAREST)
    return Image.blend(photo, colours, alpha)
