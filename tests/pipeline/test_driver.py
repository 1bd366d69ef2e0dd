"""The driver's observable contract with the in-process executor: files, resume, crash, refusal,
and what a rerun costs.

The same ShardLabeler runs inside the Ray actors (tests/jobs/test_label_on_ray.py); here it runs in
this process with the session's tiny segmenter, so these tests pay for images, not for Ray.
"""

import json
import subprocess
import sys
from collections import Counter

import pytest
from crashing import Crash
from label_helpers import write_shards

from pipeline.driver import JobRefused, plan_job, run_job
from pipeline.models import load_segmenter
from schemas.layout import OutputLayout
from schemas.reading import iter_rows, read_job, read_manifest, read_markers


def _output_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _keys(output):
    return Counter(row["key"] for row in iter_rows(str(output), columns=["key"]))


def test_run_resume_and_rerun_after_success(tmp_path, make_job, make_samples, fast_segmenter):
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(3)})
    output = tmp_path / "out"
    first = make_job(urls[:2], output, executor="local")
    assert run_job(first, segmenter=fast_segmenter).exit_code == 0
    assert _output_files(output) == [
        "_SUCCESS", "_job.json", "_manifest.parquet", "_markers/shard-000000.json", "_markers/shard-000001.json",
        "data/shard-000000.parquet", "data/shard-000001.parquet",
    ]
    before = {name: (output / "data" / f"{name}.parquet").stat().st_mtime_ns for name in ("shard-000000", "shard-000001")}

    # Same command plus one more shard: only the new one is labelled.
    grown = make_job(urls, output, executor="local")
    assert plan_job(grown).pending == ["shard-000002"]
    summary = run_job(grown, segmenter=fast_segmenter)
    assert (summary.skipped, summary.labelled, summary.exit_code) == (2, 1, 0)
    assert {n: (output / "data" / f"{n}.parquet").stat().st_mtime_ns for n in before} == before

    # Again after success: nothing to do, and no model is needed to find that out.
    again = run_job(grown, segmenter=None)
    assert (again.labelled, again.skipped, again.exit_code) == (0, 3, 0)
    assert _keys(output) == Counter({f"s{i:02d}-000": 1 for i in range(3)})
    assert read_manifest(str(output)).column("status").to_pylist() == ["done"] * 3
    record = read_job(str(output))
    assert record["weights_sha256"] == fast_segmenter.model_info["weights_sha256"]
    # The precision float32 ran in, the config's choice as this device applies it (docs/method.md).
    assert record["config"]["tf32"] is True
    assert (record["model_info"]["float32_convolutions"], record["model_info"]["float32_matmul"]) == ("ieee", "ieee")


def test_a_rerun_reads_no_marker_and_lists_them_once(tmp_path, make_job, make_samples, fast_segmenter, monkeypatch):
    from pipeline import commit

    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(3)})
    output = tmp_path / "out"
    job = make_job(urls, output, executor="local")
    assert run_job(job.replace(inputs=job.inputs[:2]), segmenter=fast_segmenter).exit_code == 0
    manifest = read_manifest(str(output))

    fetched, listings = [], []
    monkeypatch.setattr(commit, "load_markers", lambda layout, names: fetched.append(list(names)) or [])
    list_markers = OutputLayout.list_markers
    monkeypatch.setattr(OutputLayout, "list_markers", lambda layout: listings.append(1) or list_markers(layout))
    # One new shard: its row comes from this run's event, the others from the previous manifest.
    assert run_job(job, segmenter=fast_segmenter).labelled == 1
    assert (fetched, len(listings)) == ([], 1)
    rows = read_manifest(str(output))
    assert rows.slice(0, 2).to_pylist() == manifest.to_pylist() and rows.column("shard")[2].as_py() == "shard-000002"
    # Nothing to do: the same manifest again, still without reading a marker.
    assert run_job(job).labelled == 0
    assert (fetched, len(listings)) == ([], 2)
    assert read_manifest(str(output)).equals(rows)


def test_a_missing_manifest_is_rebuilt_from_the_markers(tmp_path, make_job, make_samples, fast_segmenter):
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(2)})
    output = tmp_path / "out"
    job = make_job(urls, output, executor="local")
    assert run_job(job, segmenter=fast_segmenter).exit_code == 0
    manifest = read_manifest(str(output))
    (output / "_manifest.parquet").unlink()  # as after a run killed before its end
    assert run_job(job).labelled == 0
    assert read_manifest(str(output)).equals(manifest)


def test_the_driver_never_imports_torch():
    # The driver process plans, hands out shards and commits; the model and torch live in the labellers.
    code = "import sys, jobs.label, pipeline.driver; print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_crash_in_a_shard_then_rerun_gives_every_key_once(tmp_path, make_job, make_samples, fast_segmenter, monkeypatch):
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(2)})
    output = tmp_path / "out"
    job = make_job(urls, output, executor="local", rows_per_row_group=1, batch_size=1)
    with monkeypatch.context() as patched:
        Crash("shard-000001", after_rows=1, mode="raise", attempts=99).patch(patched)
        summary = run_job(job, segmenter=fast_segmenter)
    assert summary.exit_code == 1 and list(summary.failed) == ["shard-000001"]
    assert "injected failure" in summary.failed["shard-000001"].error
    # The failed shard left nothing: no marker, no (partial) data file, no _SUCCESS.
    assert _output_files(output) == ["_job.json", "_manifest.parquet", "_markers/shard-000000.json", "data/shard-000000.parquet"]
    manifest = {row["shard"]: row for row in read_manifest(str(output)).to_pylist()}
    assert manifest["shard-000001"]["status"] == "failed" and manifest["shard-000001"]["attempts"] == 2

    summary = run_job(job, segmenter=fast_segmenter)
    assert (summary.exit_code, summary.labelled) == (0, 1)
    assert _keys(output) == Counter({f"s{i:02d}-{j:03d}": 1 for i in range(2) for j in range(2)})
    assert (output / "_SUCCESS").exists()


def test_unreadable_shards_are_retried_reported_and_the_job_goes_on(tmp_path, make_job, make_samples, fast_segmenter):
    good, cut = write_shards(str(tmp_path / "in"), {"good.tar": make_samples(0, 1), "cut.tar": make_samples(1, 2)})
    data = (tmp_path / "in" / "cut.tar").read_bytes()
    (tmp_path / "in" / "cut.tar").write_bytes(data[: len(data) // 2 + 100])
    missing = str(tmp_path / "in" / "missing.tar")
    summary = run_job(make_job([good, cut, missing], tmp_path / "out", executor="local"), segmenter=fast_segmenter)
    assert summary.exit_code == 1 and summary.labelled == 1
    assert sorted(summary.failed) == ["cut", "missing"]
    assert "does not exist" in summary.failed["missing"].error and "cut.tar" in summary.failed["cut"].error
    statuses = {r["shard"]: (r["status"], r["attempts"]) for r in read_manifest(str(tmp_path / "out")).to_pylist()}
    assert statuses == {"good": ("done", 1), "cut": ("failed", 2), "missing": ("failed", 2)}
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    assert not (tmp_path / "out" / "data" / "cut.parquet").exists()


def test_changed_config_or_model_is_refused_unless_overwrite(tmp_path, make_job, make_samples, fast_segmenter, fast_config):
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 1)})
    output = tmp_path / "out"
    job = make_job([url], output, executor="local")
    assert run_job(job, segmenter=fast_segmenter).exit_code == 0

    changed = job.replace(method=fast_config.replace(num_masks=2))
    with pytest.raises(JobRefused, match=r"num_masks: 3 -> 2.*--overwrite"):
        run_job(changed)
    with pytest.raises(JobRefused, match="model"):
        plan_job(job.replace(model="someone/else"))
    # Execution-only knobs (batching, chunking) do not change results, so they are no reason to refuse.
    assert plan_job(job.replace(batch_size=7, method=fast_config.replace(chunk_size=4))).pending == []

    summary = run_job(changed.replace(overwrite=True), segmenter=load_segmenter(changed))
    assert summary.exit_code == 0 and summary.labelled == 1
    assert read_job(str(output))["config"]["num_masks"] == 2
    assert read_markers(str(output))[0].config_hash == changed.method.config_hash


def test_an_output_made_under_old_defaults_is_refused_naming_each_change(tmp_path, make_job):
    # _job.json as an older version wrote it: another default, and a field it did not have yet.
    job = make_job(["x/shard-000000.tar"], tmp_path / "out")
    old_config = {**job.method.to_dict(), "num_masks": 40}
    del old_config["feature_samples"]
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.markers_dir)
    layout.fs.pipe_file(layout.job_path, json.dumps({"config": old_config, "config_hash": "old", "model": job.model}).encode())
    layout.fs.pipe_file(layout.marker_path("shard-000000"), b"{}")  # something is labelled: the output is locked
    with pytest.raises(JobRefused) as refused:
        plan_job(job)
    message = str(refused.value)
    new = job.method
    assert f"num_masks: 40 -> {new.num_masks}" in message
    assert f"feature_samples: (absent) -> {new.feature_samples}" in message
    assert "seed" not in message  # unchanged fields are not listed
    assert "pass --overwrite to delete it and start over" in message


def test_an_output_with_nothing_labelled_yet_is_not_locked(tmp_path, make_job, fast_segmenter):
    typo = make_job([str(tmp_path / "missing.tar")], tmp_path / "out", executor="local", model="owner/typo")
    assert run_job(typo, segmenter=fast_segmenter).exit_code == 1  # the shard failed: nothing labelled
    assert read_job(str(tmp_path / "out"))["model"] == "owner/typo"
    assert plan_job(typo.replace(model="owner/right")).pending == ["missing"]


def test_an_output_without_job_file_is_not_resumed(tmp_path, make_job):
    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.data_dir)
    layout.fs.pipe_file(layout.data_path("shard-000000"), b"not ours")
    with pytest.raises(JobRefused, match="no _job.json"):
        plan_job(make_job(["x/shard-000000.tar"], tmp_path / "out"))


def test_two_inputs_with_one_output_name_are_refused(tmp_path, make_job):
    with pytest.raises(ValueError, match="both be written as data/shard-1.parquet"):
        plan_job(make_job(["a/shard-1.tar", "b/shard-1.tar"], tmp_path / "out"))


def test_an_output_of_schema_version_1_resumes_unchanged(tmp_path, make_job, make_samples, fast_segmenter):
    # Written before CLIP embeddings existed: _job.json has no "clip" and says schema 1.
    urls = write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 1) for i in range(2)})
    output = tmp_path / "out"
    job = make_job(urls, output, executor="local")
    assert run_job(job.replace(inputs=job.inputs[:1]), segmenter=fast_segmenter).exit_code == 0
    record = json.loads((output / "_job.json").read_text())
    del record["clip"]
    record["schema_version"] = 1
    (output / "_job.json").write_text(json.dumps(record))
    summary = run_job(job, segmenter=fast_segmenter)
    assert (summary.skipped, summary.labelled, summary.exit_code) == (1, 1, 0)
    assert _keys(output) == Counter({"s00-000": 1, "s01-000": 1})
    assert read_job(str(output))["clip"] is None and read_job(str(output))["config_hash"] == record["config_hash"]


def test_img2dataset_webdataset_output_is_valid_input(tmp_path, make_job, photo_jpegs, fast_segmenter):
    # `img2dataset --output_format webdataset` writes NNNNN.tar holding <9-digit key>.jpg, .txt and
    # .json per sample, with NNNNN.parquet and NNNNN_stats.json beside each tar.
    folder = tmp_path / "img2dataset"
    write_shards(str(folder), {
        f"{shard:05d}.tar": [{"__key__": f"{shard:05d}{i:04d}", "jpg": photo_jpegs[i], "txt": b"a caption",
                              "json": json.dumps({"url": "https://example.com/x.jpg", "width": 96}).encode()}
                             for i in range(2)]
        for shard in range(2)
    })
    for shard in range(2):
        (folder / f"{shard:05d}.parquet").write_bytes(b"PAR1")  # stand-ins, which the glob below leaves out
        (folder / f"{shard:05d}_stats.json").write_text("{}")
    output = tmp_path / "out"
    assert run_job(make_job([f"{folder}/*.tar"], output, executor="local"), segmenter=fast_segmenter).exit_code == 0
    rows = [(row["key"], row["status"]) for row in iter_rows(str(output), columns=["key", "status"])]
    assert rows == [("000000000", "ok"), ("000000001", "ok"), ("000010000", "ok"), ("000010001", "ok")]
    assert [marker.shard for marker in read_markers(str(output))] == ["00000", "00001"]
