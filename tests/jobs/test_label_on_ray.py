"""The labelling job end to end on the session's local Ray (1 logical GPU), through its command line.

One S3 run (moto) and one local-disk run with an actor killed mid-shard; both read back with the
tools downstream users have: pyarrow, DuckDB, Hugging Face datasets.
"""

import argparse
import json
from collections import Counter

import fsspec
import pyarrow.dataset as pads
import pytest
from crashing import Crash
from label_helpers import write_shards

from jobs.cli import run_module
from jobs import label
from schemas.labels import decode_label_png
from schemas.reading import iter_rows, read_job, read_manifest, read_markers

pytestmark = pytest.mark.timeout(240)

METHOD_FLAGS = ["--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61", "--batch-size", "2"]


def _upload_folder(local, url, storage_options):
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())


def test_s3_shards_to_s3_labels_with_a_model_from_s3(ray_session, s3_bucket, s3_storage_options, tiny_model, tiny_clip,
                                                      make_samples, tmp_path, capsys):
    samples = make_samples(0, 2)
    samples.insert(1, {"__key__": "broken", "jpg": b"\xff\xd8 not really a jpeg"})
    write_shards(f"{s3_bucket}/shards", {"shard-000000.tar": samples, "shard-000001.tar": make_samples(1, 1)},
                 s3_storage_options)
    _upload_folder(tiny_model, f"{s3_bucket}/models/tiny", s3_storage_options)
    _upload_folder(tiny_clip, f"{s3_bucket}/models/clip", s3_storage_options)
    output = f"{s3_bucket}/labels/run1"
    argv = ["--input", f"{s3_bucket}/shards/shard-{{000000..000001}}.tar", "--output", output,
            "--model", f"{s3_bucket}/models/tiny", "--model-cache-dir", str(tmp_path / "model-cache"),
            "--clip-model", f"{s3_bucket}/models/clip", "--clip-resolution", "64",
            "--storage-options", json.dumps(s3_storage_options), *METHOD_FLAGS]

    assert run_module("jobs.label", argv) == 0
    assert "2 labelled, 0 failed" in capsys.readouterr().out

    fs = fsspec.filesystem("s3", **s3_storage_options)
    root = output.removeprefix("s3://")
    assert sorted(p.removeprefix(root + "/") for p in fs.find(root)) == [
        "_SUCCESS", "_job.json", "_manifest.parquet", "_markers/shard-000000.json", "_markers/shard-000001.json",
        "data/shard-000000.parquet", "data/shard-000001.parquet",
    ]
    rows = list(iter_rows(output, storage_options=s3_storage_options))
    assert [(r["key"], r["status"]) for r in rows] == [("s00-000", "ok"), ("broken", "error"), ("s00-001", "ok"), ("s01-000", "ok")]
    assert rows[1]["error"].startswith("undecodable image")
    assert rows[0]["shard"] == f"{s3_bucket}/shards/shard-000000.tar"
    assert decode_label_png(rows[0]["labels"]["bytes"]).shape == (rows[0]["height"], rows[0]["width"])
    table = pads.dataset(f"{root}/data", filesystem=fs, format="parquet").to_table(columns=["key", "status"])
    assert table.num_rows == 4
    markers = read_markers(output, s3_storage_options)
    assert [m.stats.errors for m in markers] == [1, 0] and markers[0].input_etag
    # No credential reaches the bookkeeping files.
    for name in ("_job.json", "_markers/shard-000000.json"):
        text = fs.cat_file(f"{root}/{name}").decode()
        assert "testing-secret" not in text and "testing-key" not in text
    assert read_job(output, s3_storage_options)["model"] == f"{s3_bucket}/models/tiny"
    # The actor loaded CLIP from S3 too: every segment carries its embedding, and the output records the model.
    assert all(len(segment["clip_embedding"]) == 16 for row in rows if row["status"] == "ok" for segment in row["segments"])
    assert read_job(output, s3_storage_options)["clip"]["clip_model"] == f"{s3_bucket}/models/clip"
    assert len(list((tmp_path / "model-cache").iterdir())) == 2  # one copy of each model, renamed into place

    # Rerun: nothing left to do.
    assert run_module("jobs.label", argv) == 0
    assert "2 already done, 0 labelled" in capsys.readouterr().out


def test_local_paths_survive_an_actor_dying_mid_shard(ray_session, tmp_path, tiny_model, make_samples, capsys):
    from pipeline.driver import run_job

    write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(2)})
    output = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in" / "shard-{000000..000001}.tar"), "--output", str(output),
            "--model", str(tiny_model), "--rows-per-row-group", "1", "--accelerator", "gpu", *METHOD_FLAGS]

    assert run_module("jobs.label", [*argv, "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert "2 input shard(s), 0 done, 2 pending" in listing and not output.exists()

    # The actor process exits (as on OOM or preemption) in shard 1 after writing its rows, before the commit.
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    job = label.job_from_args(parser.parse_args(argv))
    crash = Crash("shard-000001", after_rows=1, mode="exit", attempts=1)
    summary = run_job(job, distribute=crash.on_ray(job.with_absolute_paths()))
    assert summary.exit_code == 0
    assert "2 labelled, 0 failed" in summary.format()
    markers = {m.shard: m for m in read_markers(str(output))}
    assert (markers["shard-000000"].attempt, markers["shard-000001"].attempt) == (1, 2)
    assert markers["shard-000000"].worker != markers["shard-000001"].worker  # a replacement actor
    keys = Counter(row["key"] for row in iter_rows(str(output), columns=["key"]))
    assert keys == Counter({f"s{i:02d}-{j:03d}": 1 for i in range(2) for j in range(2)})
    assert read_manifest(str(output)).column("attempts").to_pylist() == [1, 2]

    assert run_module("jobs.label", [*argv, "--dry-run"]) == 0
    assert "2 done, 0 pending" in capsys.readouterr().out

    _read_back_with_duckdb_and_datasets(output / "data")


def _read_back_with_duckdb_and_datasets(data_dir):
    import duckdb
    from datasets import load_dataset

    counts = duckdb.sql(
        f"SELECT shard, count(*), sum(num_segments), min(len(segments[1].embedding)) "
        f"FROM read_parquet('{data_dir}/*.parquet') GROUP BY shard ORDER BY shard"
    ).fetchall()
    assert [c[1] for c in counts] == [2, 2] and all(c[3] == 64 for c in counts)

    dataset = load_dataset("parquet", data_files=str(data_dir / "*.parquet"), split="train",
                           cache_dir=str(data_dir.parent.parent / "hf-cache"))
    row = dataset[0]
    assert row["labels"].mode == "L" and row["labels"].size == (row["width"], row["height"])
    assert row["lowres_labels"].size == (4, 4)  # the tiny model's 16x16-equivalent grid
    assert sorted(dataset.unique("key")) == ["s00-000", "s00-001", "s01-000", "s01-001"]


def test_a_model_that_cannot_load_stops_the_job_with_the_reason(ray_session, tmp_path, make_job, make_samples):
    from pipeline.distributors import JobError
    from pipeline.driver import run_job

    urls = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 1)})
    job = make_job(urls, tmp_path / "out", model=str(tmp_path / "no-such-model"))
    with pytest.raises(JobError, match="could not start.*no-such-model"):
        run_job(job)
