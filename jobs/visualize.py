"""Colours for label maps: a fixed palette, colourised maps and overlays, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 distinct colours, the same for every image (golden-ratio hues)."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    saturation = 0.65 + 0.35 * ((np.arange(count) // 7) % 2)
    value = 0.95 - 0.25 * ((np.arange(count) // 3) % 2)
    return (_hsv_to_rgb(hues, saturation, value) * 255).round().astype(np.uint8)


def colorize(labels: np.ndarray) -> Image.Image:
    """RGB picture of a label map, one palette colour per id."""
    return Image.fromarray(palette(int(labels.max()) + 1)[labels])


def overlay(image: Image.Image, labels: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The label colours blended over the image (resized to the label map if needed)."""
    colours = colorize(labels)
    return Image.blend(image.convert("RGB").resize(colours.size), colours, opacity)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    sector = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([
        np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
        np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1),
    ])
    return table[sector, np.arange(len(h))]
