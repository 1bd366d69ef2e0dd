"""The labelling job on a three-node Ray cluster (all on this machine) that loses a worker node mid-shard.

    python tests/reliability/node_loss_cluster.py JOB_JSON REPORT_JSON

Run by test_node_loss.py in its own process: the test session is already connected to its local
Ray, and a process joins one cluster only. JOB_JSON is a ``LabelJobConfig.to_dict()``; the job
joins the cluster through ``address``, as ``--address`` would. Once an actor has committed a shard
and reported progress on its next one, its node is lost; the other node is left to finish the job
(no autoscaler brings a node back). REPORT_JSON says what was lost and how the job ended.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from ray._private import ray_constants
from ray.cluster_utils import Cluster

import pipeline.driver
from pipeline.config import LabelJobConfig
from pipeline.distributors import ShardQueue
from pipeline.tasks import Progress, ShardDone


def start_cluster() -> tuple[Cluster, list]:
    """A head with no CPU and no GPU (it only hosts the driver, as in ray_cluster.yaml) and two GPU nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]  # one labelling actor fits each
    return cluster, workers


def node_of(pid: int, workers: list):
    """The Ray node whose raylet started the actor process ``pid``."""
    parent = psutil.Process(pid).ppid()
    return next(w for w in workers if w.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid == parent)


def lose_node(cluster: Cluster, node) -> None:
    """Stop every process of ``node`` at once with SIGKILL, as when its machine disappears."""
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    workers = psutil.Process(raylet).children(recursive=True)
    cluster.remove_node(node, allow_graceful=False)
    # remove_node kills Ray's own daemons; worker processes would otherwise exit only once they
    # notice their raylet is gone, and could write a few more rows meanwhile.
    for process in workers:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


class LosingANode:
    """``run_on_ray``, its events passed through unchanged, that loses one worker node mid-shard.

    After a ShardDone the driver hands that actor its next shard at once, so the one shard that
    enters ``queue.in_flight`` after it is that actor's; the first Progress event of that shard means
    the actor is labelling it, with most of its rows still ahead. Then the actor's node is lost.
    """

    def __init__(self, cluster: Cluster, workers: list, report: dict):
        self.cluster, self.workers, self.report = cluster, workers, report
        self.run_on_ray = pipeline.driver.run_on_ray
        self.committed: list[str] = []
        self.last_committer: int | None = None  # pid of the actor that committed last
        self.held_by_others: set[str] = set()  # the shards the other actors held at that moment
        self.lost = False

    def __call__(self, queue: ShardQueue, job: LabelJobConfig, on_progress) -> Iterator:
        def progress(event: Progress) -> None:
            on_progress(event)
            if not self.lost and self.last_committer and event.shard in set(queue.in_flight) - self.held_by_others:
                self._lose(event)

        for event in self.run_on_ray(queue, job, progress):
            if isinstance(event, ShardDone):
                self.committed.append(event.task.name)
                self.last_committer = int(event.marker.worker.rsplit(":", 1)[1])
                self.held_by_others = set(queue.in_flight)
            yield event

    def _lose(self, event: Progress) -> None:
        started = time.monotonic()
        lose_node(self.cluster, node_of(self.last_committer, self.workers))
        self.lost = True
        self.report.update(lost_pid=self.last_committer, lost_shard=event.shard, rows_done=event.images,
                           committed_before=list(self.committed), lose_node_s=round(time.monotonic() - started, 2))


def main(job_path: str, report_path: str) -> int:
    job = LabelJobConfig.from_dict(json.loads(Path(job_path).read_text()))
    started = time.monotonic()
    cluster, workers = start_cluster()
    report: dict = {"cluster_up_s": round(time.monotonic() - started, 1)}
    try:
        pipeline.driver.run_on_ray = LosingANode(cluster, workers, report)
        summary = pipeline.driver.run_job(job.replace(address=cluster.address, accelerator="gpu", num_actors=len(workers)))
        report.update(exit_code=summary.exit_code, labelled=summary.labelled, failed=sorted(summary.failed),
                      job_s=round(summary.wall_seconds, 1))
    finally:
        Path(report_path).write_text(json.dumps(report))
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
