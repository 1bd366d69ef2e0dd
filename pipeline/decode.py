"""Sample bytes -> RGB picture, with every way it can go wrong turned into a reason.

A bad sample never stops a shard: it becomes a ``DecodedSample`` with ``error`` set, and later an
error row. Error messages read "<reason>: <detail>"; the reason part is what per-shard statistics
count, so it stays one of the fixed strings below (or of those in pipeline.sources, for samples
whose tar members could not be read as one).
"""

from __future__ import annotations

import dataclasses
import io
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence

from PIL import Image

from emerdiff.images import to_rgb
from pipeline.sources import SAMPLE_ERROR, SampleError

MISSING_IMAGE = "missing image member"
UNDECODABLE = "undecodable image"
TOO_LARGE = "image too large"
UNSUPPORTED = "unsupported image"


@dataclasses.dataclass
class DecodedSample:
    key: str
    image: Image.Image | None  # RGB, EXIF orientation applied; None when error is set
    error: str | None = None
    decode_seconds: float = 0.0


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode encoded image bytes, refusing more than ``max_pixels`` before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our own limit below is the one that applies; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as error:
        raise SampleError(TOO_LARGE, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's "cannot identify image file" and friends
        raise SampleError(UNDECODABLE, str(error) or type(error).__name__) from None
    width, height = image.size
    if width * height > max_pixels:
        raise SampleError(TOO_LARGE, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels} (--max-image-pixels)")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
        raise SampleError(UNDECODABLE, str(error) or type(error).__name__) from None
    try:
        return to_rgb(image)
    except ValueError as error:
        raise SampleError(UNSUPPORTED, str(error)) from None


def find_image(sample: dict, extensions: Sequence[str]) -> bytes:
    """The bytes of the sample's image member: the first of ``extensions`` that it has.

    Raises the sample's own SampleError when ShardStream could not read its members as one sample.
    """
    if SAMPLE_ERROR in sample:
        raise sample[SAMPLE_ERROR]
    for extension in extensions:
        if extension in sample:
            return sample[extension]
    members = sorted(name for name in sample if not name.startswith("__"))
    raise SampleError(MISSING_IMAGE, f"looked for {', '.join('.' + e for e in extensions)}; sample has "
                                     f"{', '.join('.' + m for m in members) or 'no members'}")


def decode_samples(samples: Iterable[dict], extensions: Sequence[str], max_pixels: int) -> Iterator[DecodedSample]:
    """webdataset sample dicts in, decoded samples out, one for one and in order."""
    for sample in samples:
        started = time.perf_counter()
        key = sample["__key__"]
        try:
            image = decode_image(find_image(sample, extensions), max_pixels)
        except SampleError as error:
            yield DecodedSample(key, None, str(error), time.perf_counter() - started)
            continue
        yield DecodedSample(key, image, None, time.perf_counter() - started)
