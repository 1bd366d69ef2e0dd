"""Shards that are odd as tars, and odd URL lists.

Inside a readable tar every sample gets its own outcome: malformed samples become error rows and
the shard is committed. Only a tar that cannot be read, is not a tar or is cut off fails a shard.
"""

import io
import tarfile

import fsspec
import pytest
from label_helpers import write_shards

from jobs.cli import run_module
from pipeline.config import LabelJobConfig
from pipeline.driver import run_job
from schemas.reading import iter_rows, read_manifest, read_markers

# The image extensions the job tries by default, as the missing-image message lists them.
LOOKED_FOR = "looked for .jpg, .jpeg, .png, .webp"


def _tar_bytes(members, encoding="utf-8"):
    """A tar with exactly these (name, bytes) members in this order; webdataset's writer would refuse some.

    GNU format writes names as raw bytes in ``encoding``, as old tools do (pax would add UTF-8 headers).
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _put(url, data, storage_options=None):
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)
    return url


def _mixed_shard(jpg):
    """Each malformed case of the issue between ordinary samples: (tar bytes, expected rows in tar order)."""
    members = [
        ("plain.jpg", jpg),
        ("k.jpg", jpg), ("k.jpg", jpg),  # one member name twice in one sample
        ("far.jpg", jpg),  # this key comes back below
        ("images/train/000123.jpg", jpg), ("images/train/000123.json", b"{}"),  # the usual folders in a key
        ("a.jpg", jpg), ("b.jpg", jpg), ("a.json", b"{}"), ("b.json", b"{}"),  # two keys interleaved
        ("../escape.jpg", jpg), ("x/../../y.jpg", jpg),  # keys with ..
        ("caf\xe9.jpg", jpg),  # a name that is not UTF-8 (latin-1 bytes)
        ("far.jpg", jpg),
        ("last.jpg", jpg),
    ]
    missing_image = f"missing image member: {LOOKED_FOR}; sample has .json"
    expected = [
        ("plain", "ok", None),
        ("k", "error", "duplicate member: k.jpg appears twice"),
        ("far", "ok", None),
        ("images/train/000123", "ok", None),
        ("a", "ok", None), ("b", "ok", None), ("a", "error", missing_image), ("b", "error", missing_image),
        ("../escape", "ok", None), ("x/../../y", "ok", None),
        ("caf\\xe9", "error", "undecodable member name: caf\\xe9.jpg is not UTF-8 (key stored as caf\\xe9)"),
        ("far", "ok", None),
        ("last", "ok", None),
    ]
    return _tar_bytes(members, encoding="latin-1"), expected


@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["local", "s3"])
def test_malformed_samples_are_error_rows_and_the_rest_of_the_shard_is_labelled(
        store, request, tmp_path, make_job, make_samples, photo_jpegs, fast_segmenter):
    storage_options = request.getfixturevalue("s3_storage_options") if store == "s3" else {}
    root = request.getfixturevalue("s3_bucket") if store == "s3" else str(tmp_path)
    data, expected = _mixed_shard(photo_jpegs[0])
    [good] = write_shards(f"{root}/in", {"good.tar": make_samples(0, 1)}, storage_options)
    mixed = _put(f"{root}/in/mixed.tar", data, storage_options)
    empty = _put(f"{root}/in/empty.tar", _tar_bytes([]), storage_options)
    output = f"{root}/out"

    job = make_job([good, mixed, empty], output, executor="local", max_attempts=1, storage_options=storage_options)
    summary = run_job(job, segmenter=fast_segmenter)

    assert (summary.exit_code, summary.labelled, summary.failed) == (0, 3, {})
    rows = [(r["key"], r["status"], r["error"]) for r in iter_rows(output, storage_options=storage_options)
            if r["shard"].endswith("/mixed.tar")]
    assert rows == expected
    markers = {m.shard: m for m in read_markers(output, storage_options)}
    assert markers["mixed"].stats.rows == len(expected) and markers["empty"].stats.rows == 0
    assert markers["mixed"].stats.error_reasons == {"duplicate member": 1, "missing image member": 2, "undecodable member name": 1}
    assert set(read_manifest(output, storage_options).column("status").to_pylist()) == {"done"}
    # Keys are data, never paths: the output holds its own files and nothing else.
    fs, out = fsspec.core.url_to_fs(output, **storage_options)
    assert sorted(p.removeprefix(out + "/") for p in fs.find(out)) == [
        "_SUCCESS", "_job.json", "_manifest.parquet", "_markers/empty.json", "_markers/good.json",
        "_markers/mixed.json", "data/empty.parquet", "data/good.parquet", "data/mixed.parquet"]
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)) == ["in", "out"]


@pytest.mark.timeout(120)
def test_only_a_cut_or_unreadable_tar_fails_its_shard_and_a_rerun_gives_the_same(tmp_path, make_job, make_samples,
                                                                                 photo_jpegs, fast_segmenter):
    jpg = photo_jpegs[0]
    whole = _tar_bytes([(f"s{i}.jpg", jpg) for i in range(4)])
    member = 512 + -(-len(jpg) // 512) * 512  # a header block, then the data padded to whole blocks
    inputs = tmp_path / "in"
    [good] = write_shards(str(inputs), {"good.tar": make_samples(0, 1)})
    shards = {
        "cut-in-member.tar": whole[: 2 * member + 512 + 100],  # inside s2's bytes
        "cut-in-header.tar": whole[: 2 * member + 200],  # inside s2's header
        "cut-between-members.tar": whole[: 2 * member],  # after s1, no end-of-archive blocks
        "zero-bytes.tar": b"",
        "not-a-tar.tar": b"<html>Access denied</html>" * 40,
    }
    urls = [good] + [_put(str(inputs / name), data) for name, data in shards.items()]
    job = make_job(urls, tmp_path / "out", executor="local", max_attempts=1)

    summary = run_job(job, segmenter=fast_segmenter)

    assert summary.exit_code == 1 and summary.labelled == 1
    errors = {name: failure.error for name, failure in summary.failed.items()}
    for name in ("cut-in-member", "cut-in-header", "cut-between-members"):
        assert f"{name}.tar is cut off or damaged after 2 whole sample(s)" in errors[name]
    assert "unexpected end of data" in errors["cut-in-member"] and "truncated header" in errors["cut-in-header"]
    assert "without the end-of-archive blocks" in errors["cut-between-members"]
    assert "zero-bytes.tar is not a tar archive: empty file" in errors["zero-bytes"]
    assert "not-a-tar.tar is not a tar archive" in errors["not-a-tar"]
    # No row of a failed shard is kept: the shard stays pending and is labelled whole once repaired.
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["good.parquet"]
    manifest = {row["shard"]: (row["status"], row["error"]) for row in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert manifest["good"] == ("done", None)
    assert {name: manifest[name] for name in errors} == {name: ("failed", error) for name, error in errors.items()}
    rows = [(r["key"], r["status"]) for r in iter_rows(str(tmp_path / "out"), columns=["key", "status"])]

    rerun = run_job(job, segmenter=fast_segmenter)

    assert rerun.exit_code == 1 and {name: failure.error for name, failure in rerun.failed.items()} == errors
    assert [(r["key"], r["status"]) for r in iter_rows(str(tmp_path / "out"), columns=["key", "status"])] == rows
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["good.parquet"]


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
