"""The scale simulation's CI smoke run: the real driver over moto S3 with a few simulated actors."""

import json

from benchmarks.scale_sim import main


def test_smoke_simulation_labels_every_shard_once_and_reports(tmp_path, capsys):
    report_path = tmp_path / "scale.json"
    argv = ["--shards", "40", "--actors", "8", "--processes", "1", "--sleep", "0.01", "--images-per-shard", "2",
            "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    run, resume, output = report["run"], report["resume"], report["output"]
    # Shard i holds 1 + i % 2 images: 20 shards of one, 20 of two.
    assert report["images"] == 60
    assert run["labelled"] == 40 and run["failed"] == 0 and run["exit_code"] == 0
    assert run["images_ok"] == 60 and run["image_errors"] == 0
    assert output["markers"] == output["data_files"] == output["manifest_rows"] == output["manifest_done"] == 40
    assert output["one_marker_per_shard"] and output["one_data_file_per_shard"] and output["one_manifest_row_per_shard"]
    assert output["shards_without_marker"] == output["shards_without_data_file"] == []
    assert output["manifest_images"] == 60 and output["success"]
    # The second invocation finds everything done and labels nothing.
    assert resume["pending"] == 0 and resume["done"] == 40 and resume["markers_listed"] == 40
    assert resume["run_job_skipped"] == 40 and resume["run_job_labelled"] == 0
    assert set(run["phases"]) == {"plan", "labelling", "finish"}
    assert all(phase["wall_seconds"] > 0 and phase["driver_cpu_seconds"] >= 0 for phase in run["phases"].values())
    assert run["driver_cpu_ms_per_shard"] > 0
    memory = run["driver_memory"]
    assert memory["peak_rss_mib"] >= memory["rss_after_mib"] > 0
    printed = capsys.readouterr().out
    assert "0 pending" in printed and "driver CPU per shard" in printed
