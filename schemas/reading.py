"""Reading a labelling output back, given only its URL (the output folder is the interface).

Only committed shards count: a data file whose marker is missing belongs to a shard that was
interrupted and will be rewritten, so the readers here skip it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import pyarrow.parquet as pq

from schemas.labels import parse_file_metadata
from schemas.layout import OutputLayout
from schemas.markers import ShardMarker


def read_job(output_url: str, storage_options: dict | None = None) -> dict:
    """The ``_job.json`` of an output; FileNotFoundError (saying so) when there is none."""
    layout = OutputLayout(output_url, storage_options)
    try:
        with layout.fs.open(layout.job_path, "rb") as file:
            return json.load(file)
    except FileNotFoundError:
        raise FileNotFoundError(f"{output_url} is not a labelling output: it has no {layout.job_path.rsplit('/', 1)[-1]}") from None


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


def committed_data_files(output_url: str, storage_options: dict | None = None) -> list[str]:
    """Full URLs of the data files of done shards, sorted by shard name."""
    layout = OutputLayout(output_url, storage_options)
    return [layout.full_url(layout.data_path(name)) for name in layout.list_markers()]


def iter_rows(output_url: str, columns: Sequence[str] | None = None, storage_options: dict | None = None,
              batch_size: int = 64) -> Iterator[dict]:
    """Rows of every done shard as dicts: shards by name, rows in input order within a shard."""
    layout = OutputLayout(output_url, storage_options)
    for name in layout.list_markers():
        with layout.fs.open(layout.data_path(name), "rb") as file:
            parquet = pq.ParquetFile(file)
            for batch in parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None):
                yield from batch.to_pylist()


def read_file_metadata(data_url: str, storage_options: dict | None = None) -> dict:
    """The ``emerdiff`` metadata (model, config, hashes, versions) of one data file."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(data_url, **(storage_options or {}))
    with fs.open(path, "rb") as file:
        return parse_file_metadata(pq.read_schema(file))


def read_manifest(output_url: str, storage_options: dict | None = None):
    """The ``_manifest.parquet`` table (pyarrow) written at the end of the last run."""
    layout = OutputLayout(output_url, storage_options)
    with layout.fs.open(layout.manifest_path, "rb") as file:
        return pq.read_table(file)
