"""The GPU check's CI run: ``--smoke`` runs every section on a CPU with the tiny model, so the script
cannot rot before a GPU arrives; a failing section is recorded and the others still run; a run that
is killed leaves the sections it finished."""

import dataclasses
import json
import numbers
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import psutil
import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[2]


def _numbers(values) -> list:
    if isinstance(values, dict):
        return [n for v in values.values() for n in _numbers(v)]
    if isinstance(values, list):
        return [n for v in values for n in _numbers(v)]
    return [values] if isinstance(values, numbers.Number) and not isinstance(values, bool) else []


@pytest.mark.timeout(600)
def test_smoke_run_reports_every_section(tmp_path, capsys, ray_session):
    path = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--smoke", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["complete"] is True and report["running"] is None
    for name in gpu_check.SECTIONS:
        section = report[name]
        assert "error" not in section and "skipped" not in section and "unfinished" not in section, (name, section)
        assert _numbers(section), name
    environment = report["environment"]
    assert (environment["tf32"], environment["float32_convolutions"], environment["float32_matmul"]) == (True, "ieee", "ieee")
    assert environment["pytorch_cuda_alloc_conf"] == os.environ["PYTORCH_CUDA_ALLOC_CONF"]
    production = report["production"]
    assert production["seconds_per_image"] > 0 and production["best_batch_seconds_per_image"] > 0
    assert set(production["stage_seconds_per_image"]) == {"encode", "features", "k-means", "inversion", "modulated runs", "decodes"}
    plan = production["memory_plan"]
    assert plan["chunk_size"] >= 2 and plan["estimated_peak_bytes"] > 0
    assert production["chunks_in_use"] == {"unet": plan["chunk_size"], "decode": plan["decode_chunk"]}
    assert report["flops"]["flops_per_image"] > 0 and report["flops"]["achieved_tflops"] > 0
    clip = report["clip"]  # the tiny CLIP at 64 px on the timed images
    assert (clip["shape"], clip["resolution"]) == ("tiny", 64) and clip["seconds_per_image"] > 0
    assert clip["share_of_image_flops"] == clip["flops_per_image"] / (report["flops"]["flops_per_image"] + clip["flops_per_image"])
    for dtype in ("float16", "bfloat16"):
        assert 0.5 <= report["precision"][dtype]["identical_label_pixels"] <= 1
    # TF32 exists only on CUDA: on a CPU the other choice must give the very same labels.
    assert report["precision"]["tf32=false"]["identical_label_pixels"] == 1.0
    assert report["precision"]["tf32=false"]["decodes_seconds_per_image"] > 0
    assert report["reference"]["identical_label_pixels"] >= 0.99
    for option in ("channels_last", "attention_replay=query_key"):  # each ran in a child process of its own
        assert report["runtime_options"][option]["identical_label_pixels"] >= 0.99
        assert report["runtime_options"][option]["process_seconds"] > report["runtime_options"][option]["seconds_per_image"]
    assert report["ray"]["identical_label_pixels"] == 1.0 and report["ray"]["efficiency"] > 0
    assert report["ray"]["gpus_given_to_ray"] == 0
    printed = capsys.readouterr().out
    assert "EmerDiff GPU check" in printed and "CLIP stage (tiny, 64 px)" in printed


@pytest.mark.timeout(300)
def test_a_smoke_run_killed_halfway_leaves_the_sections_it_finished(tmp_path):
    path = tmp_path / "gpu_check.json"
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--json", str(path)], cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = []
    try:
        while "production" not in seen:  # killed as soon as a measured section is written, long before Ray starts
            assert child.poll() is None, "the smoke run ended before it could be killed"
            if path.exists():
                seen = list(json.loads(path.read_text()))  # never half a file: every read parses
            time.sleep(0.2)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    report = json.loads(path.read_text())
    assert report["complete"] is False and "total_seconds" not in report
    assert report["running"] in gpu_check.SECTIONS  # the section under way when it was killed
    assert report["environment"]["device"] == "cpu"
    assert report["production"]["seconds_per_image"] > 0 and "section_seconds" in report["production"]
    assert "ray" not in report and "runtime_options" not in report


def test_a_failing_section_is_recorded_and_the_others_run(monkeypatch):
    def broken(settings, state):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(gpu_check, "SECTIONS", {"first": broken, "second": lambda settings, state: {"value": 1.0}})
    report = gpu_check.run(gpu_check.SMOKE)
    assert report["first"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert report["second"]["value"] == 1.0
    gpu_check.print_table(report)  # the table shows errors too


class _Model:
    """Stands in for a segmenter on the device: what matters is whether something still holds it."""


def test_a_section_that_fails_or_is_skipped_leaves_no_model_behind(monkeypatch):
    """Otherwise the next section plans with less free memory, and reports a false speedup."""
    models = []

    def build(settings, dtype, **changes):
        models.append(weakref.ref(model := _Model()))
        return model

    def production(settings, state):  # as the real one: its segmenter kept for flops
        state.update(flops_segmenter=build(settings, "float32"), base_labels=[], images=[], stage_seconds={})
        return {}

    def timed_segment(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    def nothing_held(settings, state):
        return {"models_alive": sum(model() is not None for model in models)}

    monkeypatch.setattr(gpu_check, "build_segmenter", build)
    monkeypatch.setattr(gpu_check, "StageClock", lambda segmenter: None)
    monkeypatch.setattr(gpu_check, "timed_segment", timed_segment)
    monkeypatch.setattr(gpu_check, "SECTIONS", {"production": production, "flops": gpu_check.flops, "after_skip": nothing_held,
                                                "precision": gpu_check.precision, "after_failure": nothing_held})
    settings = dataclasses.replace(gpu_check.SMOKE, needs_seconds={"flops": 10**6})  # flops: no time left
    report = gpu_check.run(settings)
    assert "skipped" in report["flops"] and report["after_skip"]["models_alive"] == 0
    assert report["precision"]["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert report["after_failure"]["models_alive"] == 0 and len(models) == 2


def test_an_option_runs_only_if_its_compile_budget_fits_what_is_left():
    settings = dataclasses.replace(gpu_check.FULL, options=(("torch_compile=unet", {"torch_compile": "unet"}),))
    state = {"deadline": time.perf_counter() + 100, "seconds_per_image": 3.0, "checkpoint": lambda name, partial: None}
    report = gpu_check.runtime_options(settings, state)  # a child would need CUDA: it must not start
    expected = settings.child_start_seconds + settings.compile_seconds["unet"] + 3 * 3.0
    assert report["torch_compile=unet"]["estimated_seconds"] == expected
    assert report["torch_compile=unet"]["skipped"].startswith("time budget: ")
    # What this run measured compiling the UNet replaces the budget for the options after.
    state["compile_seconds"]["unet"] = 20.0
    both = {"channels_last": True, "torch_compile": "unet+vae"}
    assert gpu_check.option_seconds(settings, both, state) == settings.child_start_seconds + 20 + 120 + 9


def test_a_child_past_its_timeout_is_killed_with_its_own_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
              f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(600)")
    started = time.perf_counter()
    outcome = gpu_check.run_child([sys.executable, "-c", script], tmp_path / "log.txt", timeout=5)
    assert outcome == "timed out after 5 s and was killed" and time.perf_counter() - started < 60
    grandchild = int(pid_file.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 10  # SIGKILL is delivered asynchronously
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone()
