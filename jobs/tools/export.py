"""``emerdiff export``: a labelling output in the format training code reads, one module per format.

  png         img_dir/<name>.<ext> and ann_dir/<name>.png, mmsegmentation's layout (``export_png``)
  coco        images/<name>.<ext> and annotations.json with an RLE mask per segment (``export_coco``)
  hf          a Hugging Face dataset: data/*.parquet with an image column, and a card (``export_huggingface``)
  webdataset  shard-000000.tar, ...: <name>.<ext>, <name>.seg.png, <name>.json (``export_webdataset``)

What every format shares lives here: rows are read one done shard at a time (``ExportRun.batches``),
each shard's images streamed from the input shard its rows name (``jobs.tools.input_images``); error
rows are left out and counted; every row is named by one rule (``SampleNames``); every file appears
whole or not at all (``pipeline.storage``); and ``export.json`` (``ExportSummary``) is written last,
so an export is finished exactly when it has one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import posixpath
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import pyarrow as pa
from fsspec.core import url_to_fs
from tqdm import tqdm

from emerdiff.config import positive_int_problem
from jobs.tools.input_images import InputImage, InputShard, decoding_options
from pipeline.config import option, output_option
from pipeline.storage import PendingFile, is_local, replace_file
from pipeline.writer import PendingSink
from schemas.classes import UNKNOWN, ClassTable, relabel
from schemas.labels import STATUS_OK, decode_label_png, encode_label_png
from schemas.layout import OutputLayout
from schemas.reading import ROW, iter_batches
from schemas.urls import options_for, redact_url

# format -> (module, function); imported on use, each pulls in only what its format needs.
EXPORTERS = {
    "coco": ("jobs.tools.export_coco", "export_coco"),
    "hf": ("jobs.tools.export_huggingface", "export_huggingface"),
    "png": ("jobs.tools.export_png", "export_png"),
    "webdataset": ("jobs.tools.export_webdataset", "export_webdataset"),
}
SUMMARY_FILE = "export.json"
# Rows read at once: with their images in memory, a batch is what one shard costs beyond its stream.
BATCH_ROWS = 64
FORMAT_FIELDS = ("annotations", "unknown_segments")  # in the summary of the formats that set them only
MAX_LISTED_SKIPS = 100  # skipped rows listed by shard, row and key in the summary; all are counted


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    output: str = output_option()
    file_format: Literal["coco", "hf", "png", "webdataset"] = option(help="What to write.", name="--format")
    destination: str = option(help="Folder to write the export to.", name="--out", metavar="DIR")
    clusters: str | None = option(
        None, "Class table folder from `emerdiff cluster` or `emerdiff name`: export dataset-wide classes, not "
              "segment ids.", metavar="DIR")
    # Each row's image is read from the input shard it was labelled from; without, labels only.
    with_images: bool = option(True, "Leave the images out: do not read the input shards.", name="--no-images")
    # Embeddings are most of the bytes.
    embeddings: bool = option(True, "hf only: leave the segment embeddings out.", name="--no-embeddings")
    maxcount: int = option(1000, "webdataset only: samples per output shard.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.file_format not in EXPORTERS:
            raise ValueError(f"file_format must be one of {sorted(EXPORTERS)}, got {self.file_format!r}")
        if problem := positive_int_problem("maxcount", self.maxcount):
            raise ValueError(problem)


@dataclasses.dataclass
class ExportSummary:
    """What an export holds and what it left out; ``export.json``, written last."""

    format: str
    source: str  # the labelling output, redacted
    images: bool
    class_table: str | None
    class_names: list[str] | None  # with a class table: class c's name at position c
    ignore_index: int | None  # with a class table: the value of pixels without a class
    input_shards: int = 0  # done shards read
    rows: int = 0  # rows exported
    error_rows: int = 0  # rows the labeller could not label: never exported
    skipped_rows: int = 0  # ok rows left out because they have no usable file name (``SampleNames``)
    skipped_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: list[dict] = dataclasses.field(default_factory=list)  # the first MAX_LISTED_SKIPS: shard, row, key, reason
    files: list[str] = dataclasses.field(default_factory=list)  # webdataset: the shards; hf: the data files
    annotations: int | None = None  # coco: segments annotated
    unknown_segments: int | None = None  # coco with a class table: segments of no class, not annotated

    def skip(self, shard: str, row: int, key: str, reason: str) -> None:
        self.skipped_rows += 1
        self.skipped_reasons[reason] = self.skipped_reasons.get(reason, 0) + 1
        if len(self.skipped) < MAX_LISTED_SKIPS:
            self.skipped.append({"shard": shard, "row": row, "key": key, "reason": reason})

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {name: value for name, value in values.items() if value is not None or name not in FORMAT_FIELDS}


def export(config: ExportConfig) -> ExportSummary:
    """Write the export; returns its summary (also written to ``DESTINATION/export.json``).

    Raises ValueError for an output with nothing to export, rows the class table lacks, or an input
    shard that is missing or changed (``InputShardError``); the files already written stay whole,
    and no summary is written.
    """
    module, function = EXPORTERS[config.file_format]
    exporter = getattr(importlib.import_module(module), function)  # first: a format's missing extra says so at once
    run = ExportRun(config)
    exporter(run)
    return run.finish()


# -- names ---------------------------------------------------------------------------------------------

NAME_TAKEN = "name taken by another row of the shard"


def key_problem(key: str) -> str | None:
    """Why a sample key cannot be part of a file name inside the export folder, or None."""
    if not key:
        return "empty key"
    if key.startswith("/"):
        return "absolute key"
    if "\\" in key:
        return "backslash in key"
    if any(ord(character) < 32 or ord(character) == 127 for character in key):
        return "control character in key"
    parts = key.split("/")
    if any(part in (".", "..") for part in parts):
        return "'.' or '..' part in key"
    if "" in parts:
        return "empty part in key"
    return None


class SampleNames:
    """The export names of one shard's rows, given in row order: ``<shard>/<key>`` for a key's
    first row in the shard, ``<shard>/<key>~<n>`` for its n-th repeat.

    Every row takes its name, error rows too, so a row's name depends only on the keys of its input
    shard. A row whose key is unsafe as a path (``key_problem``), or whose name another row of the
    shard already has, gets none: the export skips it and counts why. So is a row whose name
    would need a folder where another row's file is (key ``a`` beside key ``a.png/b``).
    """

    def __init__(self, shard: str):
        self.shard = shard
        self._repeats: Counter = Counter()
        self._names: set[str] = set()
        self._dotted_folders: set[str] = set()  # folders a.png/ of names, as the name they could clash with: a

    def name(self, key: str) -> tuple[str | None, str | None]:
        """(name, None), or (None, why the row has no name)."""
        repeat = self._repeats[key]
        self._repeats[key] += 1
        if problem := key_problem(key):
            return None, problem
        name = f"{key}~{repeat}" if repeat else key
        folders = {_before_dot(folder) for folder in _folders(name) if "." in posixpath.basename(folder)}
        if name in self._names or name in self._dotted_folders or folders & self._names:
            return None, NAME_TAKEN
        self._names.add(name)
        self._dotted_folders |= folders
        return f"{self.shard}/{name}", None


def _folders(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: index + 1]) for index in range(len(parts))]


def _before_dot(folder: str) -> str:
    head, base = posixpath.split(folder)
    return posixpath.join(head, base.split(".", 1)[0])


# -- reading rows --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportBatch:
    """Ok rows of one shard that the export writes, with their names and, when read, their images."""

    shard: str
    rows: pa.RecordBatch  # the columns asked for, plus key, status and ROW
    names: list[str | None]  # None where the batch was read without names (hf)
    images: list[InputImage] | None

    def column(self, name: str) -> list:
        return self.rows.column(name).to_pylist()


class ExportRun:
    """One export in progress: its config, class table, destination and summary."""

    def __init__(self, config: ExportConfig):
        self.config = config
        options = config.storage_options
        self.layout = OutputLayout(config.output, options)
        self.shards = self.layout.list_markers()
        if not self.shards:
            raise ValueError(f"{redact_url(config.output)} has no finished shard to export")
        self.classes = ClassTable(config.clusters, options_for(config.clusters, options)) if config.clusters else None
        self.fs, root = url_to_fs(config.destination, **options_for(config.destination, options))
        self.root = root.rstrip("/")
        self.extensions, _ = decoding_options(config.output, options) if config.with_images else ((), 0)
        self.summary = ExportSummary(
            format=config.file_format, source=redact_url(config.output), images=config.with_images,
            class_table=redact_url(config.clusters) if config.clusters else None,
            class_names=self.class_names(), ignore_index=UNKNOWN if self.classes else None,
        )
        self.fs.makedirs(self.root, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):  # an earlier export's: this one is not finished yet
            self.fs.rm_file(self.path(SUMMARY_FILE))

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def class_names(self) -> list[str] | None:
        return [self.classes.class_name(c) for c in range(self.classes.num_classes)] if self.classes else None

    # The rows

    def batches(self, columns: Sequence[str], *, images: bool, named: bool = True, count: bool = True,
                progress: str = "") -> Iterator[ExportBatch]:
        """The exported rows of every done shard, shard by shard, ``BATCH_ROWS`` at a time.

        ``images`` reads each row's image from its input shard; ``named`` gives each row its file
        name and skips rows without one; ``count`` records the rows in the summary (once per export,
        when a format reads the rows twice).
        """
        desc = progress or f"export {self.config.file_format}"
        for shard in tqdm(self.shards, desc=desc, unit="shard", disable=None):
            source = InputShard(self.layout, shard, self.extensions, self.config.storage_options) if images else None
            with source or contextlib.nullcontext():
                yield from self._shard_batches(shard, columns, source, named, count)
            if count:
                self.summary.input_shards += 1

    def _shard_batches(self, shard: str, columns: Sequence[str], source: InputShard | None, named: bool,
                       count: bool) -> Iterator[ExportBatch]:
        names = SampleNames(shard)
        wanted = list(dict.fromkeys([*columns, "key", "status"]))
        for _, batch in iter_batches(self.config.output, wanted, self.config.storage_options, batch_size=BATCH_ROWS,
                                     positions=True, shards=[shard]):
            keep, kept_names = self._select(shard, batch, names if named else None, count)
            rows = batch.filter(pa.array(keep))
            keys, positions = rows.column("key").to_pylist(), rows.column(ROW).to_pylist()
            images = [source.image(row, key) for row, key in zip(positions, keys)] if source else None
            yield ExportBatch(shard, rows, kept_names, images)

    def _select(self, shard: str, batch: pa.RecordBatch, names: SampleNames | None, count: bool
                ) -> tuple[list[bool], list[str | None]]:
        """Which rows of the batch are exported, and their names."""
        keep, kept = [], []
        columns = (batch.column(name).to_pylist() for name in ("key", "status", ROW))
        for key, status, row in zip(*columns):
            name, problem = names.name(key) if names is not None else (None, None)
            ok = status == STATUS_OK
            keep.append(ok and problem is None)
            if keep[-1]:
                kept.append(name)
            elif count and not ok:
                self.summary.error_rows += 1
            elif count:
                self.summary.skip(shard, row, key, problem)
        if count:
            self.summary.rows += len(kept)
        return keep, kept

    # Labels and classes of a row

    def label_png(self, shard: str, row: int, png: bytes) -> bytes:
        """The row's label map as exported: the stored PNG of segment ids, or its class map."""
        if self.classes is None:
            return png
        lookup = self.classes.lookup(shard, row)
        return encode_label_png(relabel(decode_label_png(png), lookup, f"row {row} of shard {shard}"))

    def segment_classes(self, shard: str, row: int, segment_ids: np.ndarray) -> list[tuple[int, float | None]]:
        """(class, class score) of each of the row's segments, in order; ``UNKNOWN`` is the class of a
        segment without one, None the score where the table has none (``emerdiff cluster``'s)."""
        ids, classes, scores = self.classes.shard(shard).segments(row)
        table = {int(i): (int(c), None if np.isnan(score) else float(score)) for i, c, score in zip(ids, classes, scores)}
        missing = [int(i) for i in segment_ids if int(i) not in table]
        if missing:
            raise ValueError(f"row {row} of shard {shard} has segments {missing} that the class table "
                             f"{redact_url(self.classes.location)} lacks; was the table made from this output?")
        return [table[int(i)] for i in segment_ids]

    # Writing

    def write_files(self, files: dict[str, bytes]) -> None:
        """Write files given by path relative to the export, each whole or not at all."""
        paths = {self.path(relative): data for relative, data in files.items()}
        if not is_local(self.fs):
            self.fs.pipe(paths)  # an object appears only when its upload completes; one concurrent batch
            return
        for path, data in paths.items():
            replace_file(self.fs, path, data)

    def pending_file(self, relative: str) -> PendingFile:
        """A file written as a stream, which appears under ``relative`` only on ``commit()``."""
        path = self.path(relative)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        return PendingFile(self.fs, path)

    @contextlib.contextmanager
    def pending(self, relative: str) -> Iterator[PendingSink]:
        """A file written as a stream (by hand, pyarrow or tarfile) that appears under ``relative`` when
        the block ends without error; after an error nothing does, whatever the writer flushes later."""
        file = self.pending_file(relative)
        sink = PendingSink(file)
        try:
            yield sink
            file.commit()
        except BaseException:
            sink.abandoned = True
            file.discard()
            raise

    def finish(self) -> ExportSummary:
        replace_file(self.fs, self.path(SUMMARY_FILE), json.dumps(self.summary.to_dict(), indent=1).encode())
        return self.summary
