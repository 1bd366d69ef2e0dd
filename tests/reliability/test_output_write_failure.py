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
