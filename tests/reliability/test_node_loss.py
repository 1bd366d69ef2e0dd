"""A worker node of a multi-node Ray cluster is lost mid-shard: its shard is redone elsewhere, the job finishes."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from label_helpers import write_shards

from schemas.reading import iter_rows, read_manifest, read_markers

REPO = Path(__file__).resolve().parents[2]
CLUSTER_JOB = Path(__file__).with_name("node_loss_cluster.py")
SHARDS, IMAGES = 4, 4  # the node goes down one batch (2 rows) into a shard of 5


def _shards(make_samples):
    """Shard name -> samples: IMAGES photos and one undecodable sample each, so both statuses are checked."""
    shards = {}
    for i in range(SHARDS):
        samples = make_samples(i, IMAGES)
        samples.insert(1, {"__key__": f"s{i:02d}-broken", "jpg": b"\xff\xd8 not really a jpeg"})
        shards[f"shard-{i:06d}.tar"] = samples
    return shards


def _run_on_cluster(job, tmp_path) -> dict:
    job_path, report_path = tmp_path / "job.json", tmp_path / "report.json"
    job_path.write_text(json.dumps(job.to_dict()))
    result = subprocess.run([sys.executable, str(CLUSTER_JOB), str(job_path), str(report_path)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, timeout=420)
    log = result.stderr.decode(errors="replace")[-3000:]
    assert result.returncode == 0 and report_path.exists(), log
    report = json.loads(report_path.read_text())
    assert "lost_shard" in report, f"no node was lost: {report}\n{log}"
    return report


@pytest.mark.timeout(480)  # a three-node cluster and two model loads: about 3 min on a busy 2-core machine
def test_a_lost_worker_node_has_its_shard_redone_elsewhere_and_the_job_finishes(tmp_path, make_job, make_samples):
    shards = _shards(make_samples)
    urls = write_shards(str(tmp_path / "in"), shards)
    output = tmp_path / "out"

    report = _run_on_cluster(make_job(urls, output, max_attempts=2, rows_per_row_group=1), tmp_path)

    assert (report["exit_code"], report["labelled"], report["failed"]) == (0, SHARDS, [])
    assert (output / "_SUCCESS").exists()
    # Every input key exactly once, with the status its sample deserves.
    rows = list(iter_rows(str(output), columns=["key", "status", "error"]))
    expected = {s["__key__"]: "error" if "broken" in s["__key__"] else "ok" for samples in shards.values() for s in samples}
    assert Counter(r["key"] for r in rows) == Counter(list(expected))
    assert {r["key"]: r["status"] for r in rows} == expected
    assert all(r["error"].startswith("undecodable image") for r in rows if r["status"] == "error")

    # The shard the lost node was labelling was requeued and rewritten whole by the surviving actor.
    markers = {m.shard: m for m in read_markers(str(output))}
    lost, lost_worker = report["lost_shard"], f":{report['lost_pid']}"
    assert 0 < report["rows_done"] < IMAGES + 1  # it went down mid-shard
    assert {name: m.attempt for name, m in markers.items()} == {
        name.removesuffix(".tar"): 2 if name.removesuffix(".tar") == lost else 1 for name in shards}
    assert markers[lost].stats.rows == IMAGES + 1 and not markers[lost].worker.endswith(lost_worker)
    assert {name for name, m in markers.items() if m.worker.endswith(lost_worker)} <= set(report["committed_before"])
    assert sorted(read_manifest(str(output)).column("attempts").to_pylist()) == [1] * (SHARDS - 1) + [2]
