"""The commit protocol of a labelling output: what makes a shard done, and the run's bookkeeping.

A shard is committed by its data file becoming visible whole, then its marker being created only
if absent: "done" is "the marker exists", and a shard is committed once even when two attempts
race to the end. Around the shards, the driver writes ``_job.json`` first, cleans up what dead
attempts left, and finishes with ``_manifest.parquet`` and, when every input shard is done,
``_SUCCESS``. Every key comes from ``schemas.layout``; every write is all-or-nothing
(``pipeline.storage``).
"""

from __future__ import annotations

import datetime
import io
import json
import logging
from collections.abc import Iterable, Mapping

import pyarrow.parquet as pq

from pipeline.storage import create_exclusive, is_local, replace_file
from pipeline.writer import ParquetShardWriter
from schemas.layout import OutputLayout
from schemas.markers import STATUS_DONE, ShardMarker, manifest_row_done, manifest_table
from schemas.reading import load_manifest, load_markers

logger = logging.getLogger(__name__)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


# -- one shard -------------------------------------------------------------------------------------


def commit_shard(layout: OutputLayout, writer: ParquetShardWriter, marker: ShardMarker) -> ShardMarker:
    """The data file, then the marker that makes the shard done; returns the marker that counts.

    The marker is created only if absent, so a shard is committed once even if two attempts race
    to the end (a lease taken over, a store without the lease's guarantees).
    """
    fs, path = layout.fs, layout.marker_path(marker.shard)
    fs.invalidate_cache(path)
    if fs.exists(path):
        writer.abandon()  # committed meanwhile: keep that attempt's file, it matches its marker
        return _existing_marker(layout, path, marker)
    writer.commit()
    if create_exclusive(fs, path, marker.to_json().encode()):
        return marker
    return _existing_marker(layout, path, marker)


def _existing_marker(layout: OutputLayout, path: str, ours: ShardMarker) -> ShardMarker:
    existing = ShardMarker.from_json(layout.fs.cat_file(path))
    if (existing.worker, existing.attempt, existing.started_at) != (ours.worker, ours.attempt, ours.started_at):
        # Not our own write seen twice (a put retried after a lost response): another attempt won.
        logger.warning("shard %s was committed by %s (attempt %d) while %s labelled it; keeping that commit",
                       ours.shard, existing.worker, existing.attempt, ours.worker)
    return existing


def remove_uncommitted(layout: OutputLayout, names: Iterable[str]) -> None:
    """Delete data files that have no marker: left by an attempt that died before committing."""
    for name in names:
        data, marker = layout.data_path(name), layout.marker_path(name)
        if layout.fs.exists(data) and not layout.fs.exists(marker):
            layout.fs.rm_file(data)


# -- the run's bookkeeping -------------------------------------------------------------------------


def write_job_record(layout: OutputLayout, record: dict) -> None:
    """``_job.json``; read back with ``schemas.reading.load_job``."""
    _write_json(layout, layout.job_path, record)


def clear_output(layout: OutputLayout) -> None:
    """Delete everything a previous job wrote (``--overwrite``)."""
    paths = [layout.data_path(name) for name in layout.list_data_files()]
    paths += [layout.marker_path(name) for name in layout.list_markers()]
    paths += [p for p in (layout.manifest_path, layout.success_path, layout.job_path) if layout.fs.exists(p)]
    if paths:
        logger.warning("--overwrite: deleting %d file(s) of the previous output", len(paths))
        layout.fs.rm(paths)


def remove_temp_files(layout: OutputLayout) -> None:
    """Delete hidden half-written files that killed processes left on a local disk: an earlier run's
    (at the start) or this run's dead attempts' (at the end). Only the lease holder calls this, so
    no live writer owns them."""
    if not is_local(layout.fs):  # object stores never show an upload that was not completed
        return
    paths = layout.list_temp_files()
    if paths:
        logger.info("removing %d unfinished file(s) left by killed processes", len(paths))
        layout.fs.rm(paths)


def remove_success(layout: OutputLayout) -> None:
    """The output is incomplete until this run finishes."""
    if layout.fs.exists(layout.success_path):
        layout.fs.rm_file(layout.success_path)


def read_manifest_rows(layout: OutputLayout) -> dict[str, dict]:
    """The done rows of the output's ``_manifest.parquet`` by shard; empty when there is none."""
    manifest = load_manifest(layout)
    rows = [] if manifest is None else manifest.to_pylist()
    return {row["shard"]: row for row in rows if row["status"] == STATUS_DONE}


def write_manifest(layout: OutputLayout, done: Iterable[str], committed: Mapping[str, ShardMarker],
                   failed_rows: list[dict]) -> list[dict]:
    """Write ``_manifest.parquet``: one row per done shard and per shard that failed in this run.

    ``done`` names every shard with a marker (the planning listing plus this run's commits). A
    shard committed in this run takes its row from ``committed``; an earlier one from the previous
    manifest (markers never change once created); only the markers neither holds are fetched.
    Returns the done rows.
    """
    previous = read_manifest_rows(layout)
    rows = {name: manifest_row_done(marker) for name, marker in committed.items()}
    missing = []
    for name in done:
        if name in rows:
            continue
        if name in previous:
            rows[name] = previous[name]
        else:
            missing.append(name)
    if missing:  # committed by a run that ended before writing its manifest
        rows.update((marker.shard, manifest_row_done(marker)) for marker in load_markers(layout, missing))
    done_rows = list(rows.values())
    buffer = io.BytesIO()
    pq.write_table(manifest_table(done_rows + [row for row in failed_rows if row["shard"] not in rows]), buffer)
    replace_file(layout.fs, layout.manifest_path, buffer.getvalue())
    return done_rows


def write_success(layout: OutputLayout, done_rows: list[dict]) -> None:
    """``_SUCCESS``: every input shard is done; totals over the output."""
    _write_json(layout, layout.success_path, {
        "finished_at": now(),
        "shards": len(done_rows),
        "rows": sum(row["rows"] for row in done_rows),
        "errors": sum(row["errors"] for row in done_rows),
    })


def _write_json(layout: OutputLayout, path: str, value: dict) -> None:
    replace_file(layout.fs, path, json.dumps(value, indent=1, sort_keys=True).encode())
