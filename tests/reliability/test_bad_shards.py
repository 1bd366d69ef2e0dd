"""Shards that are odd as tars (repeated keys, scattered members, empty, zero bytes) and odd URL lists."""

import io
import tarfile

import pytest
from label_helpers import write_shards

from jobs.cli import run_module
from pipeline.config import LabelJobConfig
from pipeline.job import run_job
from schemas.reading import iter_rows, read_manifest, read_markers


def _write_tar(path, members):
    """A tar with exactly these (name, bytes) members in this order; webdataset's writer would refuse some."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.timeout(60)
def test_odd_tars_give_one_row_per_sample_or_a_failed_shard(tmp_path, make_job, make_samples, photo_jpegs, fast_segmenter):
    jpg = photo_jpegs[0]
    inputs = tmp_path / "in"
    [good] = write_shards(str(inputs), {"good.tar": make_samples(0, 1)})
    layouts = {
        "repeated": [("a.jpg", jpg), ("b.jpg", jpg), ("a.jpg", jpg)],  # the same key twice, not adjacent
        "scattered": [("a.jpg", jpg), ("b.jpg", jpg), ("a.txt", b"caption")],  # a's members apart
        "empty": [],
        "adjacent-duplicate": [("a.jpg", jpg), ("a.jpg", jpg)],  # one sample with two .jpg members
    }
    for name, members in layouts.items():
        _write_tar(inputs / f"{name}.tar", members)
    (inputs / "zero-bytes.tar").write_bytes(b"")
    urls = [good, *(str(inputs / f"{name}.tar") for name in [*layouts, "zero-bytes"])]

    summary = run_job(make_job(urls, tmp_path / "out", executor="local", max_attempts=1), segmenter=fast_segmenter)

    assert summary.exit_code == 1 and summary.labelled == 4
    rows = {}
    for row in iter_rows(str(tmp_path / "out")):
        rows.setdefault(row["shard"].rsplit("/", 1)[-1], []).append((row["key"], row["status"], (row["error"] or "").split(":")[0]))
    # A tar holding a key twice holds two samples: both are labelled, in tar order.
    assert rows["repeated.tar"] == [("a", "ok", ""), ("b", "ok", ""), ("a", "ok", "")]
    # Members of one key that are not adjacent are two samples; the one without an image says so.
    assert rows["scattered.tar"] == [("a", "ok", ""), ("b", "ok", ""), ("a", "error", "missing image member")]
    assert "empty.tar" not in rows and {m.shard: m.stats.rows for m in read_markers(str(tmp_path / "out"))}["empty"] == 0
    # A sample with two members of the same name, or a file that is not a tar, cannot be read safely:
    # the shard fails as a whole, named, and leaves no data file; the others are unaffected.
    assert "duplicate file name" in summary.failed["adjacent-duplicate"].error
    assert "zero-bytes.tar" in summary.failed["zero-bytes"].error
    statuses = {row["shard"]: row["status"] for row in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert statuses == {"good": "done", "repeated": "done", "scattered": "done", "empty": "done",
                        "adjacent-duplicate": "failed", "zero-bytes": "failed"}
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == [
        "empty.parquet", "good.parquet", "repeated.parquet", "scattered.parquet"]


@pytest.mark.timeout(30)
def test_blank_entries_in_a_url_list_are_refused_before_any_work(tmp_path, caplog):
    with pytest.raises(ValueError, match="must not contain blank entries"):
        LabelJobConfig(inputs=("a.tar", "  "), output=str(tmp_path / "out"))
    # As a shell would pass `$(cat urls.txt)` with an empty line quoted in: refused, exit 2, nothing written.
    assert run_module("jobs.label", ["--input", "a.tar", "", "--output", str(tmp_path / "out"), "--executor", "local"]) == 2
    assert "must not contain blank entries" in caplog.text
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(60)
def test_a_comment_line_in_a_url_list_is_one_failed_shard_not_a_failed_job(tmp_path, make_job, make_samples, fast_segmenter):
    [good] = write_shards(str(tmp_path / "in"), {"good.tar": make_samples(0, 1)})
    summary = run_job(make_job([good, "# old shards below"], tmp_path / "out", executor="local", max_attempts=1),
                      segmenter=fast_segmenter)
    assert summary.labelled == 1 and list(summary.failed) == ["old_shards_below"]
    assert "does not exist" in summary.failed["old_shards_below"].error
    assert [row["key"] for row in iter_rows(str(tmp_path / "out"), columns=["key"])] == ["s00-000"]
