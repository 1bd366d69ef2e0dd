"""The commit protocol (pipeline.commit): one commit per shard, and a manifest built from this run's
commits and the previous manifest, fetching only the markers neither holds."""

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import commit
from pipeline.writer import ParquetShardWriter
from schemas.layout import OutputLayout, data_file_key
from schemas.markers import ShardMarker, ShardStats, manifest_row_failed
from schemas.reading import read_manifest, read_markers

SCHEMA = pa.schema([pa.field("key", pa.string())])


def marker(name: str, worker: str = "a:1", rows: int = 1) -> ShardMarker:
    return ShardMarker(
        shard=name, url=f"s3://in/{name}.tar", data_file=data_file_key(name), data_bytes=1, input_size=2,
        input_etag=None, config_hash="c", model="tiny", weights_sha256=None, schema_version=1, code_version="test",
        attempt=1, worker=worker, started_at="t0", finished_at="t1", stats=ShardStats(rows=rows, ok=rows))


def write_shard(layout: OutputLayout, name: str, worker: str) -> ShardMarker:
    writer = ParquetShardWriter(layout.fs, layout.data_path(name), SCHEMA, rows_per_row_group=8)
    writer.write({"key": worker})
    writer.finish()
    return commit.commit_shard(layout, writer, marker(name, worker))


def test_a_shard_is_committed_once_even_when_two_attempts_finish_it(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.data_dir)
    layout.fs.makedirs(layout.markers_dir)
    first = write_shard(layout, "s", "a:1")
    second = write_shard(layout, "s", "b:2")  # finished later: its data file is abandoned
    assert first.worker == second.worker == "a:1"
    assert pq.read_table(layout.data_path("s")).column("key").to_pylist() == ["a:1"]
    assert [m.worker for m in read_markers(layout.url)] == ["a:1"]


def test_uncommitted_data_files_are_removed_and_committed_ones_kept(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.data_dir)
    layout.fs.makedirs(layout.markers_dir)
    write_shard(layout, "done", "a:1")
    layout.fs.pipe_file(layout.data_path("dead"), b"half")
    commit.remove_uncommitted(layout, ["done", "dead"])
    assert layout.list_data_files() == ["done"]


def test_the_manifest_takes_rows_from_commits_then_the_previous_manifest_then_markers(tmp_path, monkeypatch):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.markers_dir)
    for name in ("a", "b", "c"):
        layout.fs.pipe_file(layout.marker_path(name), marker(name).to_json().encode())
    commit.write_manifest(layout, ["a"], {}, [])  # an earlier run's manifest: only "a"
    fetched = []
    load = commit.load_markers
    monkeypatch.setattr(commit, "load_markers", lambda layout, names: fetched.append(list(names)) or load(layout, names))

    new_c = dataclasses.replace(marker("c"), worker="this-run:1")
    failed = [manifest_row_failed("d", "s3://in/d.tar", "boom", 2), manifest_row_failed("c", "s3://in/c.tar", "x", 1)]
    done_rows = commit.write_manifest(layout, ["a", "b", "c"], {"c": new_c}, failed)

    assert fetched == [["b"]]  # "a" came from the previous manifest, "c" from this run
    table = read_manifest(layout.url)
    assert table.column("shard").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("status").to_pylist() == ["done", "done", "done", "failed"]
    assert table.column("worker").to_pylist()[2] == "this-run:1"
    assert sorted(row["shard"] for row in done_rows) == ["a", "b", "c"]
    commit.write_success(layout, done_rows)
    assert layout.fs.exists(layout.success_path)
