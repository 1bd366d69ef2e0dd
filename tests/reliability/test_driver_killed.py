"""kill -9 of the job's driver in the middle of a shard, then the same command again."""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from label_helpers import write_shards

from jobs import label
from pipeline.driver import plan_job, run_job
from schemas.reading import iter_rows

REPO = Path(__file__).resolve().parents[2]
SHARDS = 4
FAST = ["--executor", "local", "--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61",
        "--batch-size", "2", "--rows-per-row-group", "1"]

# `python -m jobs.label`, with each row held back a moment so that the kill lands mid-job.
SLOW_LABEL = """
import sys, time
from pipeline import stages

fast = stages.BatchSegmenter.__call__

def slow(self, samples):
    for row in fast(self, samples):
        time.sleep(0.4)
        yield row

stages.BatchSegmenter.__call__ = slow
from jobs.cli import run_module
sys.exit(run_module("jobs.label", sys.argv[1:]))
"""


def _job(argv):
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    return label.job_from_args(parser.parse_args(argv))


def _in_progress(output):
    """Data files being written: hidden until committed (pipeline.storage.PendingFile)."""
    return sorted((output / "data").glob(".*.tmp")) if (output / "data").exists() else []


def _mid_shard(output):
    """True once a shard is committed and the next one's data file is being written."""
    return any((output / "_markers").glob("*.json")) and bool(_in_progress(output))


def _rows(output):
    columns = ["shard", "key", "status", "error", "width", "height", "num_segments", "labels"]
    return sorted((r["shard"], r["key"], r["status"], r["error"], r["width"], r["height"], r["num_segments"],
                   r["labels"]["bytes"] if r["labels"] else None) for r in iter_rows(str(output), columns=columns))


@pytest.mark.timeout(120)
def test_rerun_after_sigkill_labels_only_unfinished_shards_and_matches_a_clean_run(tmp_path, tiny_model, make_samples,
                                                                                 fast_segmenter):
    write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(SHARDS)})
    inputs = str(tmp_path / "in" / f"shard-{{000000..{SHARDS - 1:06d}}}.tar")
    argv = ["--input", inputs, "--model", str(tiny_model), *FAST]
    output, markers = tmp_path / "out", tmp_path / "out" / "_markers"

    driver = subprocess.Popen([sys.executable, "-c", SLOW_LABEL, *argv, "--output", str(output)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not _mid_shard(output):
            assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.02)
        driver.send_signal(signal.SIGKILL)  # no handler runs, no cleanup: as on OOM kill or a lost node
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stderr.close()
    assert driver.returncode == -signal.SIGKILL

    done = sorted(p.stem for p in markers.iterdir())
    assert 1 <= len(done) < SHARDS and not (output / "_SUCCESS").exists()
    assert sorted(p.stem for p in (output / "data").glob("*.parquet")) == done  # readers never see a partial file
    assert _in_progress(output)  # the killed attempt's hidden temp file
    assert (output / "_lease.json").exists()  # nobody released it: the rerun must see its holder is dead
    committed = {name: (output / "data" / f"{name}.parquet").stat().st_mtime_ns for name in done}
    job = _job([*argv, "--output", str(output)])
    assert plan_job(job).done == done and len(plan_job(job).pending) == SHARDS - len(done)

    summary = run_job(job, segmenter=fast_segmenter)
    assert (summary.exit_code, summary.skipped, summary.labelled) == (0, len(done), SHARDS - len(done))
    assert {name: (output / "data" / f"{name}.parquet").stat().st_mtime_ns for name in done} == committed
    assert (output / "_SUCCESS").exists()
    assert not _in_progress(output) and not (output / "_lease.json").exists()

    clean = run_job(_job([*argv, "--output", str(tmp_path / "clean")]), segmenter=fast_segmenter)
    assert clean.exit_code == 0
    rows = _rows(output)
    assert len(rows) == len({(r[0], r[1]) for r in rows}) == 2 * SHARDS  # every key once
    assert rows == _rows(tmp_path / "clean")  # same rows, same label bytes, as if never killed
