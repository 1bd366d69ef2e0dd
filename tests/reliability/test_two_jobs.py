"""Two jobs on one output: one lease holder at a time, no shard written twice, the other says why."""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from label_helpers import write_shards

from pipeline.driver import run_job
from pipeline.lease import LeaseHeld, LeaseLost, LeaseRecord, OutputLease, read_lease
from pipeline.labeler import ShardLabeler
from pipeline.exit_status import ExitStatus
from pipeline.tasks import ShardTask
from pipeline.storage import create_exclusive
from pipeline.writer import ParquetShardWriter
from schemas.labels import labels_schema
from schemas.layout import OutputLayout
from schemas.reading import iter_rows, read_markers

REPO = Path(__file__).resolve().parents[2]
SHARDS = 3


@pytest.fixture
def inputs(tmp_path, make_samples):
    write_shards(str(tmp_path / "in"), {f"shard-{i:06d}.tar": make_samples(i, 2) for i in range(SHARDS)})
    return [str(tmp_path / "in" / f"shard-{{000000..{SHARDS - 1:06d}}}.tar")]


def _keys(output, storage_options=None):
    return sorted((row["key"], row["status"]) for row in iter_rows(output, columns=["key", "status"], storage_options=storage_options))


def _expected_keys():
    return sorted((f"s{s:02d}-{i:03d}", "ok") for s in range(SHARDS) for i in range(2))


def _foreign_lease(**changes) -> bytes:
    record = LeaseRecord(job_id="0therj0b", host="another-host", pid=4321, pid_namespace=None,
                         started_at="2026-11-25T00:00:00+00:00", renewed_at=time.time(), ttl_seconds=3600.0)
    return dataclasses.replace(record, **changes).to_json()


# -- the primitives ----------------------------------------------------------------------------------


def test_exclusive_create_has_one_winner_among_racing_threads(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    barrier, wins = threading.Barrier(16), []

    def contend(index):
        barrier.wait()
        if create_exclusive(layout.fs, layout.lease_path, f"writer {index}".encode()):
            wins.append(index)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert Path(layout.lease_path).read_bytes() == f"writer {wins[0]}".encode()
    assert not list((tmp_path / "out").glob(".*"))  # no temp files left behind


def test_exclusive_create_on_s3_refuses_an_existing_key(s3_bucket, s3_storage_options):
    layout = OutputLayout(f"{s3_bucket}/out", s3_storage_options)
    assert create_exclusive(layout.fs, layout.lease_path, b"first")
    assert not create_exclusive(layout.fs, layout.lease_path, b"second")
    assert layout.fs.cat_file(layout.lease_path) == b"first"


@pytest.mark.parametrize("store", ["local", "memory", "s3"])
def test_an_abandoned_attempt_leaves_the_committed_file_untouched(store, tmp_path, request):
    if store == "local":
        layout = OutputLayout(str(tmp_path / "out"))
        layout.fs.makedirs(layout.data_dir, exist_ok=True)
    elif store == "memory":  # its files would appear, and replace the committed one, as soon as opened
        layout = OutputLayout(f"{request.getfixturevalue('memory_dir')}/out")
    else:
        layout = OutputLayout(f"{request.getfixturevalue('s3_bucket')}/out", request.getfixturevalue("s3_storage_options"))
    schema = labels_schema({})
    row = {name: None for name in schema.names} | {"key": "k", "status": "ok", "shard": "s", "url": "u"}
    first = ParquetShardWriter(layout.fs, layout.data_path("s"), schema, rows_per_row_group=1)
    first.write(row)
    first.finish()
    assert not layout.fs.exists(layout.data_path("s"))  # invisible until committed
    first.commit()
    committed = layout.fs.cat_file(layout.data_path("s"))

    second = ParquetShardWriter(layout.fs, layout.data_path("s"), schema, rows_per_row_group=1)
    second.write(row | {"key": "other"})
    second.abandon()
    assert layout.fs.cat_file(layout.data_path("s")) == committed
    assert layout.list_temp_files() == []


def test_a_shard_committed_by_another_attempt_is_kept_and_its_marker_returned(tmp_path, inputs, make_job, fast_segmenter):
    job = make_job([str(tmp_path / "in" / "shard-000000.tar")], tmp_path / "out")
    first = ShardLabeler(fast_segmenter, job)(ShardTask(job.inputs[0]))
    layout = OutputLayout(job.output)
    committed = Path(layout.data_path("shard-000000")).read_bytes()

    late = ShardLabeler(fast_segmenter, job)
    late.worker = "elsewhere:1"  # a second job's actor that labelled the same shard meanwhile
    second = late(ShardTask(job.inputs[0], attempt=2))
    assert second == first  # the commit that counts is the first one
    assert Path(layout.data_path("shard-000000")).read_bytes() == committed
    assert layout.list_temp_files() == []


# -- whole jobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["local", "s3"])
def test_two_jobs_started_together_label_each_shard_once(store, tmp_path, inputs, make_job, fast_segmenter, request):
    if store == "local":
        output, options = str(tmp_path / "out"), {}
    else:
        output, options = f"{request.getfixturevalue('s3_bucket')}/out", request.getfixturevalue("s3_storage_options")
    barrier, outcomes = threading.Barrier(2), {}

    def job(name):
        barrier.wait()
        try:
            outcomes[name] = run_job(make_job(inputs, output, executor="local", storage_options=options),
                                     segmenter=fast_segmenter)
        except LeaseHeld as error:
            outcomes[name] = error

    threads = [threading.Thread(target=job, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [o for o in outcomes.values() if isinstance(o, LeaseHeld)]
    finished = [o for o in outcomes.values() if not isinstance(o, LeaseHeld)]
    assert len(refused) == 1 and len(finished) == 1, outcomes
    assert f"pid {os.getpid()} on {socket.gethostname()}" in str(refused[0])  # names the job that holds it
    assert finished[0].exit_code == 0 and finished[0].labelled == SHARDS
    assert _keys(output, options) == _expected_keys()
    assert read_lease(OutputLayout(output, options)) is None  # released at the end


def test_a_second_cli_job_is_refused_with_the_holder_named_and_changes_nothing(tmp_path, inputs, tiny_model):
    output = tmp_path / "out"
    with OutputLease(OutputLayout(str(output)), ttl_seconds=600) as lease:
        before = sorted(p.name for p in output.iterdir())
        result = subprocess.run(
            [sys.executable, "-m", "jobs.label", "--input", *inputs, "--output", str(output), "--model", str(tiny_model),
             "--executor", "local"],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
        assert sorted(p.name for p in output.iterdir()) == before == ["_lease.json"]
        assert read_lease(OutputLayout(str(output))) == lease.record  # still the first job's
    assert result.returncode == ExitStatus.REFUSED, result.stderr
    assert f"is being written by job {lease.record.job_id} (pid {os.getpid()}" in result.stderr
    assert "--lease-wait" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(600)
def test_a_waiting_job_says_so_then_labels_after_the_holder_finishes(tmp_path, inputs, tiny_model):
    output = tmp_path / "out"
    inputs = [str(tmp_path / "in" / "shard-000000.tar")]
    lease = OutputLease(OutputLayout(str(output)), ttl_seconds=600)
    lease.acquire()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "jobs.label", "--input", *inputs, "--output", str(output), "--model", str(tiny_model),
         "--executor", "local", "--lease-wait", "600", "--resolution", "128", "--num-masks", "3",
         "--modulation-timestep", "61"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = waiting.stderr.readline()
        while "waiting up to" not in first_line:
            assert first_line, f"the waiting job exited: {waiting.communicate()}"
            first_line = waiting.stderr.readline()
        assert f"being written by job {lease.record.job_id}" in first_line
        assert not (output / "data").exists()  # it waits before touching anything
        lease.release()
        stdout, stderr = waiting.communicate(timeout=540)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, stderr
    assert _keys(str(output)) == [(f"s00-{i:03d}", "ok") for i in range(2)]
    assert not (output / "_lease.json").exists()


def test_a_stale_lease_is_taken_over(tmp_path, inputs, make_job, fast_segmenter, caplog):
    output = tmp_path / "out"
    output.mkdir()
    expired = _foreign_lease(renewed_at=time.time() - 7200)
    (output / "_lease.json").write_bytes(expired)
    summary = run_job(make_job(inputs, output, executor="local"), segmenter=fast_segmenter)
    assert summary.exit_code == 0 and _keys(str(output)) == _expected_keys()
    assert "taking over" in caplog.text and "job 0therj0b" in caplog.text

    # A driver of this host that was killed: its process is gone, so no need to wait for expiry.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (output / "_lease.json").write_bytes(json.dumps({
        **json.loads(_foreign_lease()), "host": socket.gethostname(), "pid": int(dead.stdout),
        "pid_namespace": os.readlink("/proc/self/ns/pid")}).encode())
    assert run_job(make_job(inputs, output, executor="local"), segmenter=fast_segmenter).exit_code == 0
    assert not (output / "_lease.json").exists()


def test_a_live_lease_elsewhere_is_waited_for_then_refused(tmp_path, inputs, make_job, fast_segmenter):
    output = tmp_path / "out"
    output.mkdir()
    (output / "_lease.json").write_bytes(_foreign_lease())
    started = time.monotonic()
    with pytest.raises(LeaseHeld, match="being written by job 0therj0b .pid 4321 on another-host"):
        run_job(make_job(inputs, output, executor="local", lease_wait=1.0), segmenter=fast_segmenter)
    assert time.monotonic() - started >= 1.0
    assert sorted(p.name for p in output.iterdir()) == ["_lease.json"]


def test_a_job_whose_lease_is_taken_over_stops_without_committing(tmp_path, inputs, make_job, fast_segmenter):
    output = tmp_path / "out"
    job = make_job(inputs, output, executor="local", lease_seconds=0.4)
    from pipeline.distributors import run_locally

    def taken_over_then_label(queue, on_progress):
        (output / "_lease.json").write_bytes(_foreign_lease())  # as a job that wrongly judged ours expired would
        time.sleep(0.5)  # the renewer checks every lease_seconds / 4
        yield from run_locally(queue, ShardLabeler(fast_segmenter, job), on_progress)

    with pytest.raises(LeaseLost, match="taken over by job 0therj0b"):
        run_job(job, distribute=taken_over_then_label)
    assert read_lease(OutputLayout(str(output))).job_id == "0therj0b"  # the new holder's lease is left alone
    assert not list((output / "_markers").glob("*.json"))
    assert not (output / "_manifest.parquet").exists() and not (output / "_SUCCESS").exists()
    assert not list((output / "data").iterdir())


def test_files_left_by_a_killed_process_are_removed_by_the_next_run(tmp_path, inputs, make_job, fast_segmenter):
    output = tmp_path / "out"
    (output / "data").mkdir(parents=True)
    leftover = output / "data" / ".shard-000001.parquet.0123456789ab.tmp"
    leftover.write_bytes(b"PAR1 half a file")
    assert OutputLayout(str(output)).list_data_files() == []  # never mistaken for a data file
    assert run_job(make_job(inputs, output, executor="local"), segmenter=fast_segmenter).exit_code == 0
    assert not leftover.exists()
    assert len(pq.read_table(output / "data" / "shard-000001.parquet")) == 2
    assert [m.shard for m in read_markers(str(output))] == [f"shard-{i:06d}" for i in range(SHARDS)]
