"""The GPU check's CI run: ``--smoke`` runs every section on a CPU with the tiny model, so the script
cannot rot before a GPU arrives; a failing section is recorded and the others still run."""

import json
import numbers

from benchmarks import gpu_check


def _numbers(values) -> list:
    if isinstance(values, dict):
        return [n for v in values.values() for n in _numbers(v)]
    if isinstance(values, list):
        return [n for v in values for n in _numbers(v)]
    return [values] if isinstance(values, numbers.Number) and not isinstance(values, bool) else []


def test_smoke_run_reports_every_section(tmp_path, capsys, ray_session):
    path = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--smoke", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    for name in gpu_check.SECTIONS:
        section = report[name]
        assert "error" not in section and "skipped" not in section, (name, section)
        assert _numbers(section), name
    production = report["production"]
    assert production["seconds_per_image"] > 0 and production["best_batch_seconds_per_image"] > 0
    assert set(production["stage_seconds_per_image"]) == {"encode", "features", "k-means", "inversion", "modulated runs", "decodes"}
    plan = production["memory_plan"]
    assert plan["chunk_size"] >= 2 and plan["estimated_peak_bytes"] > 0
    assert report["flops"]["flops_per_image"] > 0 and report["flops"]["achieved_tflops"] > 0
    for dtype in ("float16", "bfloat16"):
        assert 0.5 <= report["precision"][dtype]["identical_label_pixels"] <= 1
    assert report["reference"]["identical_label_pixels"] >= 0.99
    assert report["runtime_options"]["channels_last"]["identical_label_pixels"] >= 0.99
    assert report["ray"]["identical_label_pixels"] == 1.0 and report["ray"]["efficiency"] > 0
    assert "EmerDiff GPU check" in capsys.readouterr().out


def test_a_failing_section_is_recorded_and_the_others_run(monkeypatch):
    def broken(settings, state):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu_check, "SECTIONS", {"first": broken, "second": lambda settings, state: {"value": 1.0}})
    report = gpu_check.run(gpu_check.SMOKE)
    assert report["first"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert report["second"]["value"] == 1.0
    gpu_check.print_table(report)  # the table shows errors too
