"""The labelling driver at scale, without GPUs: many shards on moto S3, many simulated actors.

    OMP_NUM_THREADS=1 nice python -m benchmarks.scale_sim --shards 10000 --actors 256 --processes 4 --sleep 0.1 --json scale.json

Real: the driver (``pipeline.driver.run_job``: ``plan_job`` over S3, ``ShardQueue``, event
recording, the progress bar, the manifest from this run's commits and the previous manifest) and,
in the workers, ``pipeline.labeler.ShardLabeler`` reading the tars from S3, decoding them and
writing Parquet files and markers. Simulated: the model (``SleepingSegmenter`` sleeps ``--sleep`` seconds per image and
returns a striped segmentation) and the actors (threads spread over ``--processes`` worker
processes instead of one Ray actor process each: 256 processes importing torch do not fit a small
machine). The moto server and the workers run in child processes, so ``getrusage(RUSAGE_SELF)``
of this process is the driver's CPU time and memory alone (its helper threads included: the
fsspec event loop, the queue feeder, tqdm).

Reports: wall time; the driver's CPU seconds (per shard) and wall time per phase (plan,
labelling, finish = progress close + manifest + _SUCCESS); its peak and current RSS; on a second
invocation over the finished output, the time of ``plan_job`` (must find 0 pending) and of the
whole no-op ``run_job`` (the rerun: lease, plan, manifest; target under 10 s); and the markers,
data files and manifest rows left (one per shard). The exit status is 0 only when every shard has exactly one of each.
The messages between the simulated actors and the driver replace Ray's; Ray's own per-event cost
in the driver (``ray.wait``, object transfer) is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import math
import multiprocessing
import os
import pstats
import queue as queue_module
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.report import run_and_report
from emerdiff import EmerDiffConfig, Segmentation
from emerdiff.segmentation import segment_statistics
from pipeline.config import LabelJobConfig
from pipeline.distributors import JobError, ProgressCallback, ShardQueue, describe
from pipeline.driver import plan_job, run_job
from pipeline.labeler import ShardLabeler
from pipeline.tasks import Event, WorkerReady
from schemas.layout import OutputLayout
from schemas.markers import ShardMarker
from schemas.reading import read_manifest

S3_KEY, S3_SECRET = "testing-key", "testing-secret"
# Inputs and output in separate buckets, as usual: a listing of the output then sees only its files.
INPUT_BUCKET, OUTPUT_BUCKET = "scale-sim-shards", "scale-sim-labels"
SIMULATED_WEIGHTS = "simulated"
EMBEDDING_SIZE = 8
# Messages from the simulated actors to the driver: (kind, worker process, ...).
READY, PROGRESS, DONE, FAILED = "ready", "progress", "done", "failed"
# The worker processes are spawned: the driver has threads (fsspec's event loop), and forking a
# process with threads can deadlock the child.
SPAWN = multiprocessing.get_context("spawn")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--actors", type=int, default=256, help="Simulated actors (threads in the worker processes).")
    parser.add_argument("--processes", type=int, default=4, help="Worker processes the actors are spread over.")
    parser.add_argument("--sleep", type=float, default=0.1, help="Seconds the simulated model takes per image.")
    parser.add_argument("--images-per-shard", type=int, default=2,
                        help="Shard i holds 1 + i %% N images, so sizes vary from 1 to N.")
    parser.add_argument("--reruns", type=int, default=3, help="Times the no-op rerun is timed (the median counts).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--profile", type=Path, default=None,
                        help="cProfile the driver's main thread during the first run_job; stats written here.")
    args = parser.parse_args(argv)
    for name in ("shards", "actors", "processes", "images_per_shard", "reruns"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.sleep < 0:
        parser.error(f"--sleep must be >= 0, got {args.sleep}")
    args.processes = min(args.processes, args.actors)
    return args


# -- the store -----------------------------------------------------------------------------------


# A separate interpreter rather than a multiprocessing child: that would import this module, and
# with it torch, only to serve HTTP. It serves until its stdin closes (the driver exits or dies).
_MOTO_SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%d" % server.get_host_and_port(), flush=True)
sys.stdin.read()
server.stop()
"""


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server in its own process (its CPU time is not the driver's)."""
    server = subprocess.Popen([sys.executable, "-c", _MOTO_SERVER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = server.stdout.readline().strip()
        if not address:
            raise RuntimeError("the moto server did not start (see its error above); is moto[server] installed?")
        yield f"http://{address}"
    finally:
        server.stdin.close()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def storage_options(endpoint: str, connections: int) -> dict:
    # botocore keeps 10 connections per client by default; every simulated actor of a process
    # shares one client, so give them as many as there are actors.
    return {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET,
            "config_kwargs": {"max_pool_connections": max(connections, 10)}}


def tiny_jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return images


def shard_tar(index: int, images: int, jpegs: list[bytes]) -> bytes:
    import webdataset as wds

    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for i in range(images):
            writer.write({"__key__": f"s{index:06d}-{i}", "jpg": jpegs[(index + i) % len(jpegs)]})
    return buffer.getvalue()


def write_input_shards(fs, root: str, shards: int, images_per_shard: int, batch: int = 1000) -> int:
    """Write ``shards`` tars under ``root``, ``batch`` at a time (concurrent PUTs); returns the image count."""
    jpegs = tiny_jpegs(8)
    images = 0
    for first in range(0, shards, batch):
        contents = {}
        for index in range(first, min(first + batch, shards)):
            count = 1 + index % images_per_shard
            contents[f"{root}/shard-{index:06d}.tar"] = shard_tar(index, count, jpegs)
            images += count
        fs.pipe(contents)
    return images


# -- the simulated model and actors --------------------------------------------------------------


def striped_segmentation(width: int, height: int, num_masks: int) -> Segmentation:
    """A valid result: K vertical stripes at the image's size."""
    labels = np.tile((np.arange(width) * num_masks // width).astype(np.int32), (height, 1))
    area, bbox = segment_statistics(labels, num_masks)
    return Segmentation(
        labels=labels,
        lowres_labels=np.tile((np.arange(16) * num_masks // 16).astype(np.int32), (16, 1)),
        embeddings=np.zeros((num_masks, EMBEDDING_SIZE), dtype=np.float32),
        area=area,
        bbox=bbox,
        score=np.ones(num_masks, dtype=np.float32),
    )


class SleepingSegmenter:
    """Stands in for EmerDiffSegmenter: waits as a GPU-bound model would, holding no CPU."""

    def __init__(self, config: EmerDiffConfig, seconds_per_image: float):
        self.config = config
        self.seconds_per_image = seconds_per_image
        self.model_info = {"model": "simulated", "weights_sha256": SIMULATED_WEIGHTS,
                           "dtype": "float32", "device": "none"}

    def segment_batch(self, images) -> list[Segmentation]:
        time.sleep(self.seconds_per_image * len(images))
        return [striped_segmentation(image.width, image.height, self.config.num_masks) for image in images]


def _actor_loop(labeler: ShardLabeler, process: int, inbox, outbox) -> None:
    while (task := inbox.get()) is not None:
        try:
            for event in labeler.run(task):
                if isinstance(event, ShardMarker):
                    outbox.put((DONE, process, task.name, event))
                else:
                    outbox.put((PROGRESS, process, event))
        except Exception as error:  # the shard's failure is the driver's to handle, as with Ray
            outbox.put((FAILED, process, task.name, describe(error)))


def _worker_process(process: int, actors: int, job: LabelJobConfig, sleep: float, inbox, outbox) -> None:
    """``actors`` threads, each a ShardLabeler with its own simulated model, taking tasks from ``inbox``."""
    threads = []
    for index in range(actors):
        labeler = ShardLabeler(SleepingSegmenter(job.method, sleep), job)
        labeler.worker = f"{labeler.worker}/{index}"  # one name per simulated actor, as Ray's would be
        outbox.put((READY, process, {**labeler.model_info, "worker": labeler.worker}))
        threads.append(threading.Thread(target=_actor_loop, args=(labeler, process, inbox, outbox), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


class SimulatedActors:
    """``actors`` simulated actors in ``processes`` worker processes; ``distribute`` is run_job's hook.

    The driver hands a shard to a process only when one of its actors is idle, as the Ray pool does.
    """

    def __init__(self, job: LabelJobConfig, actors: int, processes: int, sleep: float):
        self.outbox = SPAWN.Queue()
        self.inboxes = [SPAWN.Queue() for _ in range(processes)]
        sizes = [actors // processes + (i < actors % processes) for i in range(processes)]
        self.processes = [
            SPAWN.Process(target=_worker_process, args=(i, size, job, sleep, self.inboxes[i], self.outbox),
                          name=f"simulated-actors-{i}", daemon=True)
            for i, size in enumerate(sizes)
        ]
        self.sizes = sizes
        self.idle = [0] * processes
        self.running = 0
        self.ready: list[WorkerReady] = []
        self.phase: dict[str, tuple[float, float, float]] = {}  # "start"/"end" of labelling -> snapshot()

    def start(self, timeout: float = 600) -> None:
        """Start the processes and wait until every actor is ready (a warm cluster)."""
        for process in self.processes:
            process.start()
        while len(self.ready) < sum(self.sizes):
            _, process, info = self._next_message(timeout)
            self.ready.append(WorkerReady(info))
            self.idle[process] += 1

    def close(self) -> None:
        for inbox, size in zip(self.inboxes, self.sizes):
            for _ in range(size):
                inbox.put(None)
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.terminate()

    def __enter__(self) -> SimulatedActors:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def distribute(self, queue: ShardQueue, on_progress: ProgressCallback) -> Iterator[Event]:
        self.phase["start"] = snapshot()
        try:
            yield from self.ready
            while queue or self.running:
                self._hand_out(queue)
                yield from self._events(self._next_message(), queue, on_progress)
        finally:
            self.phase["end"] = snapshot()

    def _hand_out(self, queue: ShardQueue) -> None:
        for process, inbox in enumerate(self.inboxes):
            while self.idle[process] and queue:
                inbox.put(queue.pop())
                self.idle[process] -= 1
                self.running += 1

    def _events(self, message: tuple, queue: ShardQueue, on_progress: ProgressCallback) -> Iterator[Event]:
        kind, process = message[0], message[1]
        if kind == PROGRESS:
            on_progress(message[2])
            return
        self.idle[process] += 1
        self.running -= 1
        task = queue.in_flight[message[2]]
        yield queue.done(task, message[3]) if kind == DONE else queue.failed(task, message[3])

    def _next_message(self, timeout: float = 600) -> tuple:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.outbox.get(timeout=5)
            except queue_module.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                if dead:
                    raise JobError(f"simulated actor process(es) {dead} died; see their output above") from None
                if time.monotonic() > deadline:
                    raise JobError(f"no message from the simulated actors in {timeout:.0f} s") from None


def _refuse_work(queue: ShardQueue, on_progress: ProgressCallback) -> Iterator[Event]:
    raise RuntimeError(f"the resume found {len(queue)} pending shard(s); every shard should have had a marker")
    yield  # a generator, like every distributor


# -- measurements --------------------------------------------------------------------------------


def driver_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def snapshot() -> tuple[float, float, float]:
    """Wall clock, driver CPU seconds, driver RSS in MiB."""
    return time.perf_counter(), driver_cpu_seconds(), rss_mib()


def rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        profiler.dump_stats(path)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


def first_run(job: LabelJobConfig, args: argparse.Namespace) -> dict:
    with SimulatedActors(job, args.actors, args.processes, args.sleep) as actors:
        peak_before = peak_rss_mib()
        started, cpu_before, rss_before = snapshot()
        with profiled(args.profile):
            summary = run_job(job, distribute=actors.distribute)
        ended, cpu_after, rss_after = snapshot()
    (start_wall, start_cpu, start_rss), (end_wall, end_cpu, end_rss) = actors.phase["start"], actors.phase["end"]
    labelled = max(summary.labelled, 1)
    return {
        "labelled": summary.labelled,
        "failed": len(summary.failed),
        "images_ok": summary.stats.ok,
        "image_errors": summary.stats.errors,
        "exit_code": summary.exit_code,
        "wall_seconds": ended - started,
        "images_per_second": summary.stats.rows / (end_wall - start_wall),
        "phases": {
            "plan": {"wall_seconds": start_wall - started, "driver_cpu_seconds": start_cpu - cpu_before,
                     "rss_end_mib": start_rss},
            "labelling": {"wall_seconds": end_wall - start_wall, "driver_cpu_seconds": end_cpu - start_cpu,
                          "rss_end_mib": end_rss},
            "finish": {"wall_seconds": ended - end_wall, "driver_cpu_seconds": cpu_after - end_cpu,
                       "rss_end_mib": rss_after},
        },
        "driver_cpu_ms_per_shard": 1000 * (end_cpu - start_cpu) / labelled,
        "driver_cpu_ms_per_shard_whole_run": 1000 * (cpu_after - cpu_before) / labelled,
        "driver_memory": {
            "rss_before_mib": rss_before,
            "rss_after_mib": rss_after,
            "rss_growth_mib": rss_after - rss_before,
            "peak_rss_before_mib": peak_before,
            # ru_maxrss is updated lazily by the kernel: it can lag the current RSS by a little.
            "peak_rss_mib": max(peak_rss_mib(), rss_after),
        },
    }


def resume_run(job: LabelJobConfig, reruns: int) -> dict:
    """The same job again over the finished output: nothing to label. The whole rerun ``reruns``
    times (moto's listing time varies with the machine's load); the median counts."""
    started, cpu = time.perf_counter(), driver_cpu_seconds()
    plan = plan_job(job)
    plan_seconds, plan_cpu = time.perf_counter() - started, driver_cpu_seconds() - cpu
    print(plan.format().splitlines()[0])
    run_seconds, run_cpu = [], []
    for _ in range(reruns):
        started, cpu = time.perf_counter(), driver_cpu_seconds()
        summary = run_job(job, distribute=_refuse_work)
        run_seconds.append(time.perf_counter() - started)
        run_cpu.append(driver_cpu_seconds() - cpu)
    layout = OutputLayout(job.output, job.storage_options)
    started = time.perf_counter()
    markers = layout.list_markers()  # what plan_job waits for: one request per 1,000 markers
    list_seconds = time.perf_counter() - started
    return {
        "plan_seconds": plan_seconds,
        "plan_driver_cpu_seconds": plan_cpu,
        "pending": len(plan.pending),
        "done": len(plan.done),
        "run_job_seconds": statistics.median(run_seconds),
        "run_job_seconds_each": run_seconds,
        "run_job_driver_cpu_seconds": statistics.median(run_cpu),
        "run_job_skipped": summary.skipped,
        "run_job_labelled": summary.labelled,
        "list_markers_seconds": list_seconds,
        "markers_listed": len(markers),
    }


def output_counts(job: LabelJobConfig, shard_names: list[str]) -> dict:
    """What the output holds, against the input shards: one marker, data file and manifest row each."""
    layout = OutputLayout(job.output, job.storage_options)
    markers, data_files = layout.list_markers(), layout.list_data_files()
    manifest = read_manifest(job.output, job.storage_options)
    manifest_shards = manifest.column("shard").to_pylist()
    expected = set(shard_names)
    return {
        "markers": len(markers),
        "data_files": len(data_files),
        "manifest_rows": manifest.num_rows,
        "manifest_done": manifest.column("status").to_pylist().count("done"),
        "manifest_images": sum(manifest.column("rows").to_pylist()),
        # Listings name each key once, so equal sets of equal size mean exactly one file per shard.
        "one_marker_per_shard": sorted(markers) == sorted(shard_names),
        "one_data_file_per_shard": sorted(data_files) == sorted(shard_names),
        "one_manifest_row_per_shard": sorted(manifest_shards) == sorted(shard_names),
        "shards_without_marker": sorted(expected - set(markers))[:20],
        "shards_without_data_file": sorted(expected - set(data_files))[:20],
        "success": layout.fs.exists(layout.success_path),
    }


def run(args: argparse.Namespace) -> dict:
    import s3fs

    report = {"shards": args.shards, "actors": args.actors, "processes": args.processes,
              "sleep_per_image": args.sleep, "images_per_shard_max": args.images_per_shard,
              "cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    with moto_endpoint() as endpoint:
        options = storage_options(endpoint, math.ceil(args.actors / args.processes))
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir(INPUT_BUCKET)
        fs.mkdir(OUTPUT_BUCKET)
        started = time.perf_counter()
        report["images"] = write_input_shards(fs, f"{INPUT_BUCKET}/shards", args.shards, args.images_per_shard)
        report["write_inputs_seconds"] = time.perf_counter() - started
        job = LabelJobConfig(
            inputs=(f"s3://{INPUT_BUCKET}/shards/shard-{{{0:06d}..{args.shards - 1:06d}}}.tar",),
            output=f"s3://{OUTPUT_BUCKET}/run1", model="simulated", method=EmerDiffConfig(num_masks=4),
            storage_options=options, batch_size=4, max_attempts=2,
        )
        report["run"] = first_run(job, args)
        report["resume"] = resume_run(job, args.reruns)
        report["output"] = output_counts(job, [f"shard-{i:06d}" for i in range(args.shards)])
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["children_cpu_seconds"] = children.ru_utime + children.ru_stime  # moto and the actors
    report["rerun_target_seconds"] = 10.0
    return report


def print_table(report: dict) -> None:
    run_, resume, output = report["run"], report["resume"], report["output"]
    phases, memory = run_["phases"], run_["driver_memory"]
    print(f"\nscale simulation: {report['shards']} shards ({report['images']} images), {report['actors']} simulated "
          f"actors in {report['processes']} processes, {report['sleep_per_image']} s/image, "
          f"{report['cpu_count']} CPUs (load {report['load_average_at_start']:.1f} at start)")
    print(f"{'first run':<34}{'wall s':>10}{'driver CPU s':>14}{'RSS after, MiB':>16}")
    for name, phase in phases.items():
        print(f"  {name:<32}{phase['wall_seconds']:>10.2f}{phase['driver_cpu_seconds']:>14.2f}"
              f"{phase['rss_end_mib']:>16.0f}")
    print(f"  {'total':<32}{run_['wall_seconds']:>10.2f}")
    print(f"driver CPU per shard (labelling): {run_['driver_cpu_ms_per_shard']:.3f} ms; whole run "
          f"{run_['driver_cpu_ms_per_shard_whole_run']:.3f} ms; {run_['images_per_second']:.1f} img/s")
    print(f"driver RSS: {memory['rss_before_mib']:.0f} -> {memory['rss_after_mib']:.0f} MiB "
          f"(growth {memory['rss_growth_mib']:.1f}), peak {memory['peak_rss_mib']:.0f} MiB")
    print(f"resume: plan_job {resume['plan_seconds']:.2f} s, driver CPU {resume['plan_driver_cpu_seconds']:.2f} s "
          f"({resume['pending']} pending, {resume['done']} done); no-op run_job {resume['run_job_seconds']:.2f} s median "
          f"of {[round(s, 2) for s in resume['run_job_seconds_each']]}, driver CPU {resume['run_job_driver_cpu_seconds']:.2f} s "
          f"(target < {report['rerun_target_seconds']:.0f} s); listing the markers {resume['list_markers_seconds']:.2f} s")
    print(f"output: {output['markers']} markers, {output['data_files']} data files, {output['manifest_rows']} manifest "
          f"rows ({output['manifest_done']} done, {output['manifest_images']} images), _SUCCESS {output['success']}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = run_and_report(run, print_table, parse_args(argv))
    output = report["output"]
    complete = all(output[f"one_{kind}_per_shard"] for kind in ("marker", "data_file", "manifest_row"))
    complete = complete and output["success"] and report["resume"]["pending"] == 0
    return 0 if complete and report["run"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
