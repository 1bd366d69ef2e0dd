"""Class tables: dataset-wide classes for the segments of a labelling output.

EmerDiff's segment ids mean something only inside their image. ``emerdiff cluster`` (k-means over
segment embeddings: classes without names) and ``emerdiff name`` (CLIP text embeddings: named
classes) each write a class table folder; ``export --clusters``, ``evaluate --clusters`` and
``preview --clusters`` read it:

    CLASSES/
      segment_classes.parquet   one row per segment of every ok row (CLASS_TABLE_SCHEMA)
      classes.json              what made the table; the fields below (SUMMARY_FIELDS) are a contract

Rows name their labelling row by ``shard`` and ``row`` (its position in the shard's data file; see
``schemas.reading``), never by key alone. Class ids are 0..C-1, positions in ``class_names`` when
the table has names; ``UNKNOWN`` marks a segment that ``name`` would not name (below
``--min-score``). The table holds one row group per shard, so a reader loads one shard at a time.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from emerdiff.naming import MAX_CLASSES, UNKNOWN, name_key  # noqa: F401  (re-exported: the table's contract)
from schemas.reading import ROW

CLASS_TABLE_FILE = "segment_classes.parquet"
SUMMARY_FILE = "classes.json"
KIND_CLUSTERS, KIND_NAMES = "clusters", "names"

CLASS_TABLE_SCHEMA = pa.schema([
    pa.field("shard", pa.string(), nullable=False),  # the labelling row's shard (data file name)
    pa.field("row", pa.int64(), nullable=False),  # the row's position in that data file
    pa.field("key", pa.string(), nullable=False),  # the row's sample key, for people and joins
    pa.field("segment_id", pa.int32(), nullable=False),  # the segment's value in the row's label map
    pa.field("class", pa.int32(), nullable=False),  # 0..C-1, or UNKNOWN
    pa.field("score", pa.float32()),  # names: the class's probability; clusters: null
])

# classes.json: what every reader may rely on ("names" tables add templates, min_score, clip_model,
# clip_weights_sha256; "clusters" tables add kmeans).
SUMMARY_FIELDS = ("kind", "source", "num_classes", "class_names", "num_segments", "segments_per_class", "num_unknown")


class ClassTableWriter:
    """Writes a class table folder, one shard at a time, then its summary (last: a table without
    ``classes.json`` is unfinished)."""

    def __init__(self, destination: str, storage_options: dict | None, num_classes: int):
        if num_classes > MAX_CLASSES:
            raise ValueError(f"a class table holds at most {MAX_CLASSES} classes (class maps are 8-bit PNGs and "
                             f"{UNKNOWN} marks unknown segments), got {num_classes}")
        self.fs, self.root = url_to_fs(destination, **(storage_options or {}))
        self.fs.makedirs(self.root, exist_ok=True)
        self.sizes = np.zeros(num_classes, dtype=np.int64)
        self.unknown = 0
        self._file = self.fs.open(f"{self.root}/{CLASS_TABLE_FILE}", "wb")
        self._writer = pq.ParquetWriter(self._file, CLASS_TABLE_SCHEMA)

    def write_shard(self, shard: str, rows: np.ndarray, keys: list[str], segment_ids: np.ndarray,
                    classes: np.ndarray, scores: np.ndarray | None = None) -> None:
        """One shard's segments, each given by its row's position and key, its id, class and score."""
        classes = np.asarray(classes, dtype=np.int64)
        if not len(classes):
            return
        known = classes != UNKNOWN
        self.sizes += np.bincount(classes[known], minlength=len(self.sizes))
        self.unknown += int((~known).sum())
        table = pa.table({
            "shard": pa.array([shard] * len(classes), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "key": pa.array(keys, pa.string()),
            "segment_id": pa.array(segment_ids, pa.int32()),
            "class": pa.array(classes, pa.int32()),
            "score": pa.array(scores, pa.float32()) if scores is not None else pa.nulls(len(classes), pa.float32()),
        }, schema=CLASS_TABLE_SCHEMA)
        self._writer.write_table(table, row_group_size=max(len(table), 1))

    def write_batch(self, shard: str, batch: pa.RecordBatch, segments, classes: np.ndarray,
                    scores: np.ndarray | None = None) -> None:
        """The segments of a record batch read with ``ROW`` positions and keys (``segments`` is its
        ``schemas.reading.flatten_segments``), with their classes and scores."""
        self.write_shard(shard, rows=batch.column(ROW).to_numpy()[segments.row],
                         keys=batch.column("key").take(segments.row).to_pylist(), segment_ids=segments.id,
                         classes=classes, scores=scores)

    def close(self, kind: str, source: str, class_names: list[str] | None, **details) -> dict:
        """Finish the table and write ``classes.json``; returns what it records."""
        self._writer.close()
        self._file.close()
        summary = {
            "kind": kind,
            "source": source,
            "num_classes": len(self.sizes),
            "class_names": class_names,
            "num_segments": int(self.sizes.sum()) + self.unknown,
            "segments_per_class": self.sizes.tolist(),
            "num_unknown": self.unknown,
            **details,
        }
        self.fs.pipe_file(f"{self.root}/{SUMMARY_FILE}", json.dumps(summary, indent=1).encode())
        return summary


class ClassTable:
    """A class table folder read back: its summary, and its classes one shard at a time."""

    def __init__(self, location: str, storage_options: dict | None = None):
        self.location = location
        fs, root = url_to_fs(location, **(storage_options or {}))
        if not fs.exists(f"{root}/{SUMMARY_FILE}"):
            raise ValueError(
                f"{location} holds no {SUMMARY_FILE}: not a finished class table. Write one with `emerdiff cluster` "
                "or `emerdiff name` (tables of emerdiff 0.1 lack row positions: write them again)")
        self.summary = json.loads(fs.cat_file(f"{root}/{SUMMARY_FILE}"))
        self._parquet = pq.ParquetFile(fs.open(f"{root}/{CLASS_TABLE_FILE}", "rb"))
        self._groups = _row_groups_by_shard(self._parquet)
        self._last: ShardClasses | None = None

    @property
    def num_classes(self) -> int:
        return int(self.summary["num_classes"])

    @property
    def class_names(self) -> list[str] | None:
        return self.summary.get("class_names")

    def class_name(self, class_id: int) -> str:
        """The class's name: its given name, "class_<id>" for a table without names, "unknown" for UNKNOWN."""
        if class_id == UNKNOWN:
            return "unknown"
        names = self.class_names
        return names[class_id] if names else f"class_{class_id}"

    def shard(self, shard: str) -> ShardClasses:
        """The classes of one shard's segments: its row group, read when another shard was asked last."""
        if self._last is None or self._last.shard != shard:
            groups = self._groups.get(shard, [])
            table = self._parquet.read_row_groups(groups, columns=["row", "segment_id", "class", "score"]) if groups else None
            self._last = ShardClasses(shard, self.location, table)
        return self._last

    def lookup(self, shard: str, row: int) -> np.ndarray:
        """Segment id -> class for one labelling row (see ``segment_lookup``)."""
        return self.shard(shard).lookup(row)


class ShardClasses:
    """One shard's part of a class table: per row, segment id -> class."""

    def __init__(self, shard: str, location: str, table: pa.Table | None):
        self.shard, self.location = shard, location
        rows = np.zeros(0, np.int64) if table is None else table.column("row").to_numpy()
        order = np.argsort(rows, kind="stable")
        self._rows = rows[order]
        columns = {} if table is None else {name: table.column(name).to_numpy(zero_copy_only=False) for name in ("segment_id", "class", "score")}
        self._ids = columns.get("segment_id", np.zeros(0, np.int32))[order]
        self._classes = columns.get("class", np.zeros(0, np.int32))[order]
        self._scores = columns.get("score", np.zeros(0, np.float32))[order]

    def segments(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(segment ids, classes, scores) of one row; ValueError when the table has no segment of it."""
        start, stop = np.searchsorted(self._rows, [row, row + 1])
        if start == stop:
            raise ValueError(f"row {row} of shard {self.shard} is not in the class table {self.location}; "
                             "was the table made from this output?")
        return self._ids[start:stop], self._classes[start:stop], self._scores[start:stop]

    def lookup(self, row: int) -> np.ndarray:
        """The row's segment id -> class table (see ``segment_lookup``)."""
        ids, classes, _ = self.segments(row)
        return segment_lookup(ids, classes)


def segment_lookup(segment_ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A table indexed by segment id giving its class; ids without a segment give -1."""
    table = np.full(int(np.max(segment_ids, initial=-1)) + 1, -1, dtype=np.int64)
    table[segment_ids] = classes
    return table


def relabel(labels: np.ndarray, lookup: np.ndarray, where: str) -> np.ndarray:
    """Segment-id map -> class map; ValueError (naming ``where``) when a pixel's id has no segment in the row."""
    if labels.max(initial=0) >= len(lookup) or (lookup[labels] < 0).any():
        raise ValueError(f"{where}: its label map holds segment ids that its segments list lacks")
    return lookup[labels]


def _row_groups_by_shard(parquet: pq.ParquetFile) -> dict[str, list[int]]:
    """shard -> the row groups holding it, from the row-group statistics (no data read)."""
    column = parquet.schema_arrow.get_field_index("shard")
    groups: dict[str, list[int]] = {}
    for index in range(parquet.num_row_groups):
        statistics = parquet.metadata.row_group(index).column(column).statistics
        if statistics is None or statistics.min != statistics.max:
            raise ValueError("class table row groups must each hold one shard; write it with ClassTableWriter")
        groups.setdefault(statistics.min, []).append(index)
    return groups
