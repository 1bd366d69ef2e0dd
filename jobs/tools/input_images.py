"""The images of a done shard's rows, read back from the input shard they were labelled from.

Row i of a shard's data file is sample i of its input shard (``schemas.reading``), so the images of
a shard are read by streaming its tar once, front to back, with the project's own shard reader
(``pipeline.sources.ShardStream``), up to each wanted position. The exports and ``preview`` both
read images this way only.

Nothing is taken on trust: before the first image, the shard's size and ETag (mtime on local disk)
are compared with those its marker recorded when it was labelled, and every sample's key with its
row's. A shard that is missing, unreadable or changed raises ``InputShardError`` naming the shard
and the key of the row being read, so a row never gets another sample's image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from pipeline.config import LabelJobConfig
from pipeline.sources import SAMPLE_ERROR, ShardInfo, ShardReadError, ShardStream, shard_info
from schemas.layout import OutputLayout
from schemas.reading import load_markers, read_job
from schemas.urls import is_pipe, lost_its_query, options_for


class InputShardError(ValueError):
    """A row's image cannot be read from its input shard; the message names the shard and the key."""


@dataclasses.dataclass(frozen=True)
class InputImage:
    """One row's image member, as stored in the input shard."""

    extension: str  # lower case, as WebDataset compares them: "jpg", "png"
    data: bytes


def decoding_options(output: str, storage_options: dict | None) -> tuple[tuple[str, ...], int]:
    """The labelling run's image extensions (tried in order) and pixel limit, else the defaults.

    The image of a row is the member the labeller took: the first of these extensions a sample has.
    """
    try:
        job = read_job(output, storage_options).get("job", {})
    except FileNotFoundError:
        job = {}
    extensions = tuple(job.get("image_extensions") or LabelJobConfig.image_extensions)
    return extensions, int(job.get("max_image_pixels") or LabelJobConfig.max_image_pixels)


class InputShard:
    """The input samples of one done shard, read forward once: ask for rows in increasing position.

    ``shard`` is the shard's name or input URL. Use as a context manager (or call ``close``) so the
    stream is closed when fewer rows than the shard holds are read.
    """

    def __init__(self, layout: OutputLayout, shard: str, extensions: Sequence[str], storage_options: dict | None):
        [self.marker] = load_markers(layout, [shard])
        self.url = self.marker.url
        self.extensions = tuple(extensions)
        self.storage_options = options_for(self.url, storage_options)
        self._samples: Iterator[dict] | None = None  # opened by the first image()
        self._position = -1  # of the last sample taken from the stream

    def __enter__(self) -> InputShard:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()  # ends ShardStream's generator, which closes the stream

    def image(self, position: int, key: str) -> InputImage:
        """The image member of the sample at ``position``, whose key must be ``key``."""
        if position <= self._position:
            raise ValueError(f"rows of {self.marker.shard} must be read in increasing position: "
                             f"{position} after {self._position}")
        if self._samples is None:
            self._samples = self._open(position, key)
        sample = self._sample_at(position, key)
        extension = next((extension for extension in self.extensions if extension in sample), None)
        if extension is None or SAMPLE_ERROR in sample:
            members = ", ".join(sorted(name for name in sample if not name.startswith("__"))) or "none"
            looked_for = ", ".join(self.extensions)
            raise self._error(position, key, f"the sample has no image member ({looked_for}; it has {members}); "
                                             "has the shard changed?")
        return InputImage(extension, sample[extension])

    def _open(self, position: int, key: str) -> Iterator[dict]:
        if is_pipe(self.url):
            raise self._error(position, key, "the input shard is a pipe: command, which is not run again here")
        if lost_its_query(self.url):
            raise self._error(position, key, "the input shard's URL was signed and is recorded without its signature")
        self._check_unchanged(position, key)
        return iter(ShardStream(self.url, self.storage_options))

    def _check_unchanged(self, position: int, key: str) -> None:
        recorded = ShardInfo(self.marker.input_size, self.marker.input_etag)
        if recorded.size is None and recorded.etag is None:
            return  # nothing was recorded (a store that reports neither): the key checks remain
        try:
            now = shard_info(self.url, self.storage_options)
        except ShardReadError as error:
            raise self._error(position, key, str(error)) from None
        changes = [f"{what} is {found!r}, {expected!r} when labelled"
                   for what, found, expected in (("size", now.size, recorded.size), ("ETag", now.etag, recorded.etag))
                   if expected is not None and found != expected]
        if changes:
            raise self._error(position, key, f"the input shard has changed since it was labelled: {'; '.join(changes)}")

    def _sample_at(self, position: int, key: str) -> dict:
        """The stream's sample at ``position``, read on from the last one taken; it must have ``key``."""
        try:
            for sample in self._samples:
                self._position += 1
                if self._position == position:
                    break
            else:
                raise self._error(position, key, f"the shard ends after {self._position + 1} samples; has it changed?")
        except ShardReadError as error:
            raise self._error(position, key, str(error)) from None
        if sample["__key__"] != key:
            found = sample["__key__"]
            raise self._error(position, key, f"sample {position} of the shard is {found!r}; has the shard changed?")
        return sample

    def _error(self, position: int, key: str, why: str) -> InputShardError:
        return InputShardError(
            f"cannot read the image of row {position} (key {key!r}) of shard {self.marker.shard} from {self.url}: {why}. "
            "Put back the input shard that was labelled, or leave the images out (--no-images)")
