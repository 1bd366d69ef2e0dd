"""Colours for label maps: a fixed palette, colourised maps and overlays, for people to look at."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

UNKNOWN_COLOUR = (128, 128, 128)  # class 255: a segment with no name
_SWATCH = 14  # legend row height in pixels


def palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours, neighbours far apart in hue (golden-ratio steps), fixed forever."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    hsv = np.stack([hues * 255, np.full(count, 170), np.full(count, 240)], axis=1).astype(np.uint8)
    return np.array(Image.fromarray(hsv[None], mode="HSV").convert("RGB"))[0]


def colorize(labels: np.ndarray, unknown: int | None = None) -> Image.Image:
    """Each id its palette colour; ``unknown`` (an id, e.g. 255 in class maps) in grey."""
    colours = palette(int(labels.max(initial=0)) + 1)
    if unknown is not None and unknown < len(colours):
        colours[unknown] = UNKNOWN_COLOUR
    return Image.fromarray(colours[labels])


def overlay(photo: Image.Image, labels: np.ndarray, alpha: float = 0.5, unknown: int | None = None) -> Image.Image:
    colours = colorize(labels, unknown).resize(photo.size, Image.Resampling.NEAREST)
    return Image.blend(photo, colours, alpha)


def legend_colour(class_id: int, unknown: int | None = None) -> tuple[int, int, int]:
    """The colour ``colorize`` gives an id (grey for ``unknown``)."""
    return UNKNOWN_COLOUR if class_id == unknown else tuple(int(v) for v in palette(class_id + 1)[class_id])


def with_legend(picture: Image.Image, entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """The picture with a legend below it: one colour swatch and its text per entry."""
    width = max(picture.width, 8 + max((int(ImageDraw.Draw(picture).textlength(text)) + _SWATCH + 12 for _, text in entries),
                                        default=0))
    canvas = Image.new("RGB", (width, picture.height + _SWATCH * len(entries) + 8), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for index, (colour, text) in enumerate(entries):
        top = picture.height + 4 + index * _SWATCH
        draw.rectangle([4, top + 1, 4 + _SWATCH - 3, top + _SWATCH - 2], fill=colour)
        draw.text((8 + _SWATCH, top), text, fill=(0, 0, 0))
    return canvas
