"""`emerdiff label` as a person meets it: help, dry run, refusals, and killing the job halfway."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from crashing import CRASH_EXIT_CODE
from label_helpers import write_shards

from emerdiff.config import EmerDiffConfig
from jobs import label
from jobs.cli import run_module
from pipeline.config import LabelJobConfig
from schemas.reading import iter_rows

REPO = Path(__file__).resolve().parents[2]
FAST = ["--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61", "--batch-size", "1"]


def test_help_documents_every_option():
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    text = parser.format_help()
    job_options = [f.name for f in dataclasses.fields(LabelJobConfig) if "help" in f.metadata]
    method_options = [f.name for f in dataclasses.fields(EmerDiffConfig)]
    for name in ["input", "output", "model", "device", "dtype", "allow_pickle", "storage_options", *job_options, *method_options]:
        assert "--" + name.replace("_", "-") in text, name
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"


def test_flags_build_the_job_config():
    parser = argparse.ArgumentParser()
    label.add_arguments(parser)
    args = parser.parse_args(["--input", "a.tar", "b/*.tar", "--output", "s3://o", "--num-masks", "5",
                              "--num-actors", "3", "--image-extensions", ".png,jpg", "--overwrite",
                              "--storage-options", '{"anon": true}'])
    job = label.job_from_args(args)
    assert job.inputs == ("a.tar", "b/*.tar") and job.method.num_masks == 5 and job.num_actors == 3
    assert job.image_extensions == ("png", "jpg") and job.overwrite and job.storage_options == {"anon": True}


def test_bad_options_exit_2_with_the_reason(tmp_path, caplog):
    assert run_module("jobs.label", ["--input", "x.tar", "--output", str(tmp_path), "--batch-size", "0", "--dry-run"]) == 2
    assert "batch_size must be a positive integer, got 0" in caplog.text
    assert run_module("jobs.label", ["--input", str(tmp_path / "none-*.tar"), "--output", str(tmp_path / "o"), "--dry-run"]) == 2
    assert "matches no file" in caplog.text


def _cli(*argv, module="jobs.label"):
    # PYTHONPATH: the crashing wrapper lives in tests/, outside the packages.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)


def test_killing_the_job_halfway_then_rerunning_gives_each_key_once(tmp_path, tiny_model, make_samples):
    write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(2)})
    output = tmp_path / "out"
    argv = ["--input", str(tmp_path / "in" / "shard-{000000..000001}.tar"), "--output", str(output),
            "--model", str(tiny_model), "--executor", "local", "--rows-per-row-group", "1", *FAST]

    # The whole job process dies (as under kill -9) in the middle of shard 1, after one row.
    crash = json.dumps({"shard": "shard-000001", "after_rows": 1, "mode": "exit"})
    killed = _cli(crash, *argv, module="crashing")
    assert killed.returncode == CRASH_EXIT_CODE, killed.stderr[-2000:]
    assert sorted(p.name for p in (output / "_markers").iterdir()) == ["shard-000000.json"]
    assert not (output / "_SUCCESS").exists()

    dry = _cli(*argv, "--dry-run")  # no model, no Ray: just the plan, and a clean exit
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert "1 done, 1 pending" in dry.stdout and "pending  shard-000001" in dry.stdout

    assert run_module("jobs.label", argv) == 0
    keys = Counter(row["key"] for row in iter_rows(str(output), columns=["key"]))
    assert keys == Counter({f"s{i:02d}-{j:03d}": 1 for i in range(2) for j in range(2)})
    assert (output / "_SUCCESS").exists()

