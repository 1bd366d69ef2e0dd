"""Exit statuses mean one thing each: every class of outcome of `emerdiff label` gets its own, and
docs/operations.md's table is the enum's."""

import re
from pathlib import Path

import pytest
from label_helpers import write_shards

from jobs.cli import run_module
from pipeline import driver
from pipeline.distributors import JobError
from pipeline.lease import LeaseLost, OutputLease
from pipeline.exit_status import ExitStatus
from schemas.layout import OutputLayout

REPO = Path(__file__).resolve().parents[2]
FAST = ["--executor", "local", "--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61"]


@pytest.fixture
def shard(tmp_path, make_samples):
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": make_samples(0, 1)})
    return url


def label(*argv) -> int:
    return run_module("jobs.label", [*argv, *FAST])


def test_the_operations_table_lists_every_status_once():
    text = (REPO / "docs/operations.md").read_text()
    rows = re.findall(r"^\| (\d+) \| ", text, flags=re.MULTILINE)
    assert sorted(int(code) for code in rows) == sorted(int(status) for status in ExitStatus)


def test_a_bad_value_is_a_usage_error(tmp_path, shard):
    assert label("--input", shard, "--output", str(tmp_path / "out"), "--batch-size", "0") == ExitStatus.USAGE


def test_an_output_held_by_another_job_is_refused(tmp_path, shard, tiny_model):
    output = tmp_path / "out"
    with OutputLease(OutputLayout(str(output)), ttl_seconds=600):
        assert label("--input", shard, "--output", str(output), "--model", str(tiny_model)) == ExitStatus.REFUSED


def test_an_output_of_another_config_is_refused(tmp_path, shard, tiny_model):
    output = str(tmp_path / "out")
    assert label("--input", shard, "--output", output, "--model", str(tiny_model)) == ExitStatus.OK
    assert label("--input", shard, "--output", output, "--model", str(tiny_model), "--seed", "7") == ExitStatus.REFUSED


def test_a_shard_that_keeps_failing_is_a_partial_failure(tmp_path, shard, tiny_model):
    broken = tmp_path / "in" / "shard-000001.tar"
    broken.write_bytes(b"not a tar")
    argv = ["--input", shard, str(broken), "--output", str(tmp_path / "out"), "--model", str(tiny_model), "--max-attempts", "1"]
    assert label(*argv) == ExitStatus.PARTIAL


def test_a_model_that_cannot_load_means_the_job_could_not_run(tmp_path, shard):
    assert label("--input", shard, "--output", str(tmp_path / "out"), "--model", str(tmp_path / "no-model")) == ExitStatus.FAILED


@pytest.mark.parametrize(("raised", "status"), [
    (LeaseLost("another job took the output over"), ExitStatus.TAKEN_OVER),
    (JobError("5 Ray actors died without a shard committed in between"), ExitStatus.FAILED),
    (KeyboardInterrupt(), ExitStatus.INTERRUPTED),
])
def test_how_a_run_ended_sets_its_status(tmp_path, shard, monkeypatch, raised, status):
    def run_job(job):
        raise raised

    monkeypatch.setattr(driver, "run_job", run_job)
    assert label("--input", shard, "--output", str(tmp_path / "out")) == status
