"""An output store that runs out of space: the shard fails clearly and is never marked done."""

import errno
import io
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from label_helpers import write_shards

from pipeline.driver import run_job
from schemas.reading import iter_rows, read_manifest


class _NoSpace(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def tell(self) -> int:
        return 0

    def commit(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def discard(self) -> None:
        pass


class _FullDiskFileSystem(MemoryFileSystem):
    """memory://, except that writing a file whose path contains one of ``full`` fails with ENOSPC."""

    protocol = "fulldisk"
    full: tuple[str, ...] = ()

    def _open(self, path, mode="rb", **kwargs):
        if ("w" in mode or "x" in mode) and any(part in path for part in self.full):
            return _NoSpace()
        return super()._open(path, mode, **kwargs)


@pytest.fixture
def full_disk(monkeypatch):
    fsspec.register_implementation("fulldisk", _FullDiskFileSystem, clobber=True)
    url = f"fulldisk:///out-{uuid.uuid4().hex[:8]}"
    yield url, lambda *parts: monkeypatch.setattr(_FullDiskFileSystem, "full", parts)
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm(root, recursive=True)


@pytest.mark.timeout(60)
def test_a_full_disk_fails_the_shard_being_written_and_leaves_no_marker(tmp_path, full_disk, make_job, make_samples,
                                                                       fast_segmenter):
    output, fill = full_disk
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(3)})
    fill("data/shard-000001.parquet", "_markers/shard-000002.json")  # the data file of one, the marker of another

    summary = run_job(make_job(urls, output, executor="local"), segmenter=fast_segmenter)

    assert summary.exit_code == 1 and summary.labelled == 1 and sorted(summary.failed) == ["shard-000001", "shard-000002"]
    for failure in summary.failed.values():
        assert "No space left on device" in failure.error and failure.task.attempt == 2
    fs, root = fsspec.core.url_to_fs(output)
    assert sorted(p.removeprefix(root + "/") for p in fs.find(root)) == [
        "_job.json", "_manifest.parquet", "_markers/shard-000000.json", "data/shard-000000.parquet"]
    statuses = {row["shard"]: row["status"] for row in read_manifest(output).to_pylist()}
    assert statuses == {"shard-000000": "done", "shard-000001": "failed", "shard-000002": "failed"}

    fill()  # space freed: the same command finishes the job
    summary = run_job(make_job(urls, output, executor="local"), segmenter=fast_segmenter)
    assert (summary.exit_code, summary.skipped, summary.labelled) == (0, 1, 2)
    assert [row["key"] for row in iter_rows(output, columns=["key"])] == ["s00-000", "s01-000", "s02-000"]


# -- the commit order: data file first, then the marker ---------------------------------------------


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path):
    """(folder URL, storage options) of an empty folder on local disk, ``memory://`` or moto S3."""
    if request.param == "local":
        return str(tmp_path), {}
    if request.param == "memory":
        return request.getfixturevalue("memory_dir"), {}
    return request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_storage_options")


def test_no_marker_exists_without_its_data_file_when_the_data_commit_fails(store, make_job, make_samples,
                                                                          fast_segmenter, monkeypatch):
    """"Done" is "the marker exists" only because the marker is created after the data file is committed."""
    from pipeline.labeler import ShardLabeler
    from pipeline.storage import PendingFile
    from pipeline.tasks import ShardTask
    from schemas.layout import OutputLayout

    root, storage_options = store
    [url] = write_shards(f"{root}/in", {"shard-000000.tar": make_samples(0, 1)}, storage_options)
    job = make_job([url], f"{root}/out", storage_options=storage_options)
    layout = OutputLayout(job.output, storage_options)
    commit = PendingFile.commit

    def refused(pending_file):
        raise OSError(f"the store refused to complete {pending_file.path} (simulated)")

    monkeypatch.setattr(PendingFile, "commit", refused)
    with pytest.raises(OSError, match=r"refused to complete .*shard-000000\.parquet \(simulated\)"):
        ShardLabeler(fast_segmenter, job)(ShardTask(url))
    assert not layout.fs.exists(layout.marker_path("shard-000000"))
    assert not layout.fs.exists(layout.data_path("shard-000000"))

    monkeypatch.setattr(PendingFile, "commit", commit)  # the store works again: the retry commits both
    marker = ShardLabeler(fast_segmenter, job)(ShardTask(url, attempt=2))
    assert marker.attempt == 2 and layout.fs.exists(layout.marker_path("shard-000000"))
    assert [row["key"] for row in iter_rows(job.output, columns=["key"], storage_options=storage_options)] == ["s00-000"]
