"""The pipeline benchmark's CI smoke run: the Ray job and the bare loop label the same images alike,
and the JSON holds every figure the README quotes."""

import json
import math

from benchmarks.pipeline_bench import main


def test_smoke_pipeline_benchmark_writes_the_report(tmp_path, capsys, ray_session):
    report_path = tmp_path / "pipeline.json"
    assert main(["--smoke", "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    job, bare = report["job"], report["bare"]
    # Every image became a row, in the shards make_shards wrote, and none failed.
    assert job["rows"] == job["ok"] == report["images"] == 4
    assert job["shards"] == job["markers"] == report["shards"] == 2 and job["failed_shards"] == 0
    # Same model, config, bytes, batches and threads on both sides run the same code: every pixel agrees.
    assert report["identical_label_pixels"] == 1.0
    for name in ("efficiency", "end_to_end_efficiency", "model_time_ratio"):
        assert math.isfinite(report[name]) and report[name] > 0, name
    assert report["end_to_end_efficiency"] < report["efficiency"]  # startup only adds time
    assert len(bare["runs_seconds"]) == 2 and all(s > 0 for s in bare["runs_seconds"])
    assert set(job["steady_state_breakdown_seconds"]) == {
        "segment_batch", "read, decode, row encoding", "parquet write", "other in shard", "commit, next shard"}
    # The parts of the steady state cannot add up to more than it (they are measured inside it).
    assert sum(job["steady_state_breakdown_seconds"].values()) <= job["steady_state_seconds"] * 1.001 + 0.05
    assert 0 < job["steady_state_seconds"] < job["end_to_end_seconds"]
    assert 0 < job["segment_share_of_steady_state"] <= 1
    assert "Ray job, steady state" in capsys.readouterr().out
