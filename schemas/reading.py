"""Reading a labelling output back, given only its URL (the output folder is the interface).

Only committed shards count: a data file whose marker is missing belongs to a shard that was
interrupted and will be rewritten, so every reader here skips it. The driver reads ``_job.json``
and the markers through the same functions (``load_job``, ``load_markers``).

A row is identified by its shard's name and its position in that shard's data file (``ROW``), never
by its key alone: keys repeat (two shards may both hold ``img0001``; since a key seen again far
apart in one tar is another sample, one shard may hold two rows with one key). Rows are in tar
order, one per input sample, so the position is also the sample's position in its input shard.

Segment embeddings are most of a data file's bytes (1280 float16 values per segment for SD), so
``iter_batches`` and ``read_rows`` can select single fields of ``segments`` ("segments.id") and
``flatten_segments`` hands a batch's segments over as numpy arrays instead of Python lists.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.labels import STATUS_OK, parse_file_metadata
from schemas.layout import JOB_FILE, MANIFEST_FILE, OutputLayout
from schemas.markers import ShardMarker

ROW = "row"  # the column ``iter_batches(positions=True)`` adds: a row's position in its shard's data file

# -- the bookkeeping files -------------------------------------------------------------------------


def load_job(layout: OutputLayout) -> dict | None:
    """The output's ``_job.json``; None when there is none (a new output)."""
    try:
        with layout.fs.open(layout.job_path, "rb") as file:
            return json.load(file)
    except FileNotFoundError:
        return None


def read_job(output_url: str, storage_options: dict | None = None) -> dict:
    """The ``_job.json`` of an output; FileNotFoundError (saying so) when there is none."""
    layout = OutputLayout(output_url, storage_options)
    return _required(load_job(layout), f"{output_url} is not a labelling output: it has no {JOB_FILE}")


def read_markers(output_url: str, storage_options: dict | None = None) -> list[ShardMarker]:
    """Markers of every done shard, sorted by shard name."""
    return load_markers(OutputLayout(output_url, storage_options))


def load_markers(layout: OutputLayout, names: Sequence[str] | None = None) -> list[ShardMarker]:
    """Markers of ``names`` (default: every done shard, one listing), fetched together."""
    names = layout.list_markers() if names is None else names
    paths = [layout.marker_path(name) for name in names]
    if not paths:
        return []
    # One concurrent fetch on object stores. start=0 asks for a byte range: s3fs then sends one GET
    # per marker, where a plain read first sends a HEAD for the size (two requests per marker).
    contents = layout.fs.cat(paths, start=0)
    return [ShardMarker.from_json(contents[path]) for path in paths]


def load_manifest(layout: OutputLayout) -> pa.Table | None:
    """The ``_manifest.parquet`` table written at the end of the last run; None when there is none."""
    try:
        with layout.fs.open(layout.manifest_path, "rb") as file:
            return pq.read_table(file)
    except FileNotFoundError:
        return None


def read_manifest(output_url: str, storage_options: dict | None = None) -> pa.Table:
    """The ``_manifest.parquet`` table written at the end of the last run; FileNotFoundError when there is none."""
    layout = OutputLayout(output_url, storage_options)
    return _required(load_manifest(layout), f"{output_url} has no {MANIFEST_FILE}")


def _required(loaded, missing: str):
    if loaded is None:
        raise FileNotFoundError(missing)
    return loaded


def committed_data_files(output_url: str, storage_options: dict | None = None) -> list[str]:
    """Full URLs of the data files of done shards, sorted by shard name: what to hand to DuckDB or
    pyarrow so that no file of an interrupted shard is read."""
    layout = OutputLayout(output_url, storage_options)
    return [layout.full_url(layout.data_path(name)) for name in layout.list_markers()]


def output_metadata(output_url: str, storage_options: dict | None = None) -> dict | None:
    """The ``emerdiff`` file metadata (model, config, versions) of the first done shard; None if none is done."""
    layout = OutputLayout(output_url, storage_options)
    names = layout.list_markers()
    if not names:
        return None
    with layout.fs.open(layout.data_path(names[0]), "rb") as file:
        return parse_file_metadata(pq.read_schema(file))


# -- the rows --------------------------------------------------------------------------------------


def iter_rows(output_url: str, columns: Sequence[str] | None = None, storage_options: dict | None = None,
              batch_size: int = 64) -> Iterator[dict]:
    """Rows of every done shard as dicts: shards by name, rows in input order within a shard."""
    for _, batch in iter_batches(output_url, columns, storage_options, batch_size):
        yield from batch.to_pylist()


def iter_batches(output_url: str, columns: Sequence[str] | None, storage_options: dict | None = None,
                 batch_size: int = 256, ok_only: bool = False, positions: bool = False,
                 shards: Sequence[str] | None = None) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(shard name, record batch) over every done shard, shards by name, rows in input order.

    ``columns`` names top-level columns and single segment fields as "segments.<field>" (the
    batch then has a ``segments`` column holding only those fields); None reads every column.
    ``ok_only`` drops error rows. ``positions`` adds the column ``ROW``: each row's position in
    its shard's data file, which with the shard name identifies it. ``shards`` limits the read
    to those done shards.
    """
    layout = OutputLayout(output_url, storage_options)
    if columns is not None and ok_only and "status" not in columns:
        columns = [*columns, "status"]
    for name in layout.list_markers() if shards is None else shards:
        with layout.fs.open(layout.data_path(name), "rb") as file:
            parquet = pq.ParquetFile(file)
            leaves = None if columns is None else parquet_columns(parquet, columns)
            start = 0
            for batch in parquet.iter_batches(batch_size=batch_size, columns=leaves):
                if positions:
                    batch = batch.append_column(ROW, pa.array(np.arange(start, start + len(batch), dtype=np.int64)))
                start += len(batch)
                yield name, _ok_rows(batch) if ok_only else batch


def iter_shards(output_url: str, columns: Sequence[str], storage_options: dict | None = None,
                ok_only: bool = False) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(shard name, its rows as one record batch with ``ROW`` positions) over every done shard, by
    name: for tools that work a shard at a time, with one shard's columns in memory."""
    batches = iter_batches(output_url, columns, storage_options, ok_only=ok_only, positions=True)
    for shard, group in itertools.groupby(batches, key=lambda item: item[0]):
        yield shard, pa.Table.from_batches([batch for _, batch in group]).combine_chunks().to_batches()[0]


def read_rows(output_url: str, shard: str, indices: Sequence[int], columns: Sequence[str],
              storage_options: dict | None = None) -> list[dict]:
    """Rows at the given positions of one done shard's data file, in the order asked.

    Reads only the row groups that hold them, so sampling a few rows of a large output is cheap.
    """
    layout = OutputLayout(output_url, storage_options)
    with layout.fs.open(layout.data_path(shard), "rb") as file:
        parquet = pq.ParquetFile(file)
        starts = np.cumsum([0] + [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)])
        wanted = sorted(set(indices))
        groups = sorted({int(np.searchsorted(starts, index, side="right")) - 1 for index in wanted})
        leaves = parquet_columns(parquet, columns)
        rows = {}
        for group in groups:
            table = parquet.read_row_group(group, columns=leaves)
            for index in wanted:
                if starts[group] <= index < starts[group + 1]:
                    rows[index] = table.slice(index - starts[group], 1).to_pylist()[0]
    return [rows[index] for index in indices]


def parquet_columns(parquet: pq.ParquetFile, columns: Sequence[str]) -> list[str]:
    """Parquet leaf paths for top-level column names and "segments.<field>" names.

    Parquet selects nested data by leaf path (``segments.list.element.id``, with the standard LIST
    encoding); naming an inner group selects nothing, so the leaves are looked up in the file.
    """
    leaves = [parquet.schema.column(i).path for i in range(parquet.metadata.num_columns)]
    chosen = [leaf for leaf in leaves if any(_selects(name, leaf) for name in columns)]
    unknown = [name for name in columns if not any(_selects(name, leaf) for leaf in leaves)]
    if unknown:
        raise ValueError(f"data file has no column(s) {unknown}; it has {sorted({leaf.split('.')[0] for leaf in leaves})}")
    return chosen


def _selects(name: str, leaf: str) -> bool:
    column, _, field = name.partition(".")
    parts = leaf.split(".")
    if not field:
        return parts[0] == column
    # list<struct<...>> leaves read <column>.list.element.<field>[...]
    return parts[0] == column and len(parts) > 3 and parts[3] == field


def _ok_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    return batch.filter(pc.equal(batch.column("status"), STATUS_OK))


# -- segments as arrays ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SegmentTable:
    """The segments of a record batch's rows, one entry per segment, rows in order.

    Fields that were not read are None.
    """

    row: np.ndarray  # (n,) int64: index of the segment's row within the batch
    id: np.ndarray  # (n,) int32: the segment's value in that row's label map
    area: np.ndarray | None = None  # (n,) int64
    bbox: np.ndarray | None = None  # (n, 4) int64, COCO x, y, width, height
    score: np.ndarray | None = None  # (n,) float32
    embedding: np.ndarray | None = None  # (n, C) float16
    clip_embedding: np.ndarray | None = None  # (n, D) float16, in outputs labelled with --clip-model

    def of_row(self, row: int) -> SegmentTable:
        """The segments of one row of the batch."""
        start, stop = np.searchsorted(self.row, [row, row + 1])
        return SegmentTable(**{
            field.name: None if getattr(self, field.name) is None else getattr(self, field.name)[start:stop]
            for field in dataclasses.fields(self)
        })


def flatten_segments(batch: pa.RecordBatch) -> SegmentTable:
    """The batch's ``segments`` column as arrays (rows without segments contribute nothing)."""
    segments = batch.column("segments")
    lengths = pc.fill_null(pc.list_value_length(segments), 0).to_numpy()
    flat = segments.flatten()  # a StructArray; honours the batch's offset after filtering
    names = {field.name for field in flat.type}
    values = {"row": np.repeat(np.arange(len(batch)), lengths), "id": flat.field("id").to_numpy()}
    if "area" in names:
        values["area"] = flat.field("area").to_numpy()
    if "score" in names:
        values["score"] = flat.field("score").to_numpy(zero_copy_only=False)
    if "bbox" in names:
        values["bbox"] = _fixed_width(flat.field("bbox"), "bbox").astype(np.int64)
    for name in ("embedding", "clip_embedding"):
        if name in names:
            values[name] = _fixed_width(flat.field(name), name)
    return SegmentTable(**values)


def _fixed_width(lists: pa.Array, name: str) -> np.ndarray:
    """(n, width) array of a list column whose lists all have one length."""
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return np.zeros((0, 0))
    if (lengths != lengths[0]).any():
        raise ValueError(f"segments' {name} lists differ in length ({sorted(set(lengths.tolist()))[:4]})")
    return lists.flatten().to_numpy(zero_copy_only=False).reshape(len(lengths), int(lengths[0]))
