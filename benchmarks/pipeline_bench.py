"""Pipeline efficiency: the full Ray labelling job against a bare ``segment_batch`` loop, same images.

    python -m benchmarks.pipeline_bench --shape mid --resolution 128 --num-masks 2 --images 16 --threads 1 --json pipeline.json

Both sides load the same random model of SD's layout (``--shape tiny|mid``, saved once as a
diffusers folder) with the same method config, and see the same JPEG bytes (the photos in
``samples/photos``, repeated to ``--images``) in the same batches:

- **bare**: this process decodes the JPEGs with PIL and calls ``segment_batch`` on them, one shard's
  images ``--batch-size`` at a time, with ``--threads`` torch threads. Timed from the first image to
  the last (model load not timed). It runs twice, before and after the job, and the mean counts:
  the first run pays the same cold first batch as the actor, the second shows how much the machine
  drifted.
- **job**: ``pipeline.driver.run_job`` with the Ray executor, one CPU actor with ``--threads`` CPUs, on
  tar shards of ``--images-per-shard`` images made by ``emerdiff make-shards``'s library function. The
  benchmark starts a local Ray whose workers get ``OMP_NUM_THREADS=--threads`` (an already initialised
  Ray, such as the tests' fixture, is reused as it is) and checks the thread count a worker sees.

Reported: end-to-end job img/s (Ray start, actor start and model load, shards, manifest, Ray
shutdown) and steady-state job img/s (from the first shard's start in the actor to the last marker
written: the markers' file times and their ``stats.wall_seconds``), each divided by the bare img/s;
where the actor's time went (ShardStats: model, reading+decoding not hidden by the reader thread
plus row encoding, Parquet writing, the rest; then commits and handing over the next shard); the
share of the steady state spent in ``segment_batch``, which is the efficiency the pipeline allows
and hardly moves with the machine's load; and the fraction of label pixels identical between the
two sides (the same work was done). ``--smoke`` (tiny model, 4 images) takes seconds plus Ray's start.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image

from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff.images import to_rgb
from benchmarks.models import save_random_model
from benchmarks.report import benchmark_main
from emerdiff.tiny import tiny_model_dir
from jobs.tools.image_shards import ShardsConfig, make_shards
from pipeline.config import LabelJobConfig
from pipeline.driver import run_job
from schemas.labels import decode_label_png, ok_row
from schemas.layout import OutputLayout
from schemas.reading import iter_rows, load_markers

logger = logging.getLogger("benchmarks.pipeline_bench")

PHOTOS = Path(__file__).resolve().parent.parent / "samples" / "photos"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", choices=["tiny", "mid"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--num-masks", type=int, default=2)
    parser.add_argument("--images", type=int, default=16, help="Images labelled by each side (the sample photos, repeated).")
    parser.add_argument("--images-per-shard", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4, help="Images per segment_batch call, on both sides.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the bare loop and CPUs (and threads) of the actor.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, 128 px, K=2, 4 images in 2 shards: seconds, for CI.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.resolution, args.num_masks = "tiny", 128, 2
        args.images, args.images_per_shard, args.batch_size = 4, 2, 2
    for name in ("images", "images_per_shard", "batch_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


# -- inputs ----------------------------------------------------------------------------------------


def model_folder(shape: str, directory: Path) -> str:
    """A diffusers folder with a random model of ``shape``: what the bare loop and the actor both load."""
    if shape == "tiny":
        return str(tiny_model_dir())
    save_random_model(shape, directory)
    return str(directory)


def input_shards(count: int, per_shard: int, directory: Path) -> tuple[list[str], list[list[tuple[str, bytes]]]]:
    """Shard URLs made by ``emerdiff make-shards``'s library function, and each shard's (key, JPEG bytes)."""
    photos = sorted(PHOTOS.glob("*.jpg"))
    if not photos:
        raise FileNotFoundError(f"no sample photos in {PHOTOS}; the benchmark labels those")
    staging = directory / "images"
    staging.mkdir()
    for index in range(count):  # copies, so every sample has its own key; bytes as they are
        photo = photos[index % len(photos)]
        shutil.copyfile(photo, staging / f"{index:06d}-{photo.stem}.jpg")
    summary = make_shards(ShardsConfig(source=str(staging), output=str(directory / "shards"), maxcount=per_shard))
    # make_shards keys a file by its name without extension, in sorted order: the same order here.
    samples = [(path.stem, path.read_bytes()) for path in sorted(staging.iterdir())]
    return list(summary.shards), [samples[i : i + per_shard] for i in range(0, count, per_shard)]


# -- bare loop -------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def bare_loop(segmenter, shards: list[list[tuple[str, bytes]]], batch_size: int) -> dict:
    """Decode and segment every image in this process, batched within each shard as the job batches."""
    results, decode_seconds = {}, 0.0
    started = time.perf_counter()
    for samples in shards:
        for first in range(0, len(samples), batch_size):
            batch = samples[first : first + batch_size]
            decode_started = time.perf_counter()
            images = [to_rgb(Image.open(io.BytesIO(data))) for _, data in batch]
            decode_seconds += time.perf_counter() - decode_started
            for (key, _), result in zip(batch, segmenter.segment_batch(images)):
                results[key] = result
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "decode_seconds": decode_seconds, "images_per_second": len(results) / seconds,
            "results": results}


def row_encode_seconds(results: dict) -> float:
    """Seconds per image the job spends turning a result into a row (PNG label maps), measured here."""
    started = time.perf_counter()
    for key, result in results.items():
        ok_row(key, "bench", result)
    return (time.perf_counter() - started) / len(results)


# -- the Ray job -----------------------------------------------------------------------------------


@contextlib.contextmanager
def local_ray(threads: int, gpus: int = 0):
    """A local Ray for the job (timed by the caller), or the caller's when one is initialised already.

    Yields whether this started it. Workers inherit the environment the raylet starts with, so
    OMP_NUM_THREADS is set for that moment only, not left in this process. ``gpus`` is given to Ray
    as it is: its own GPU detection can come up empty, and a GPU actor would then wait forever.
    """
    if ray.is_initialized():
        yield False
        return
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        ray.init(address="local", num_cpus=threads, num_gpus=gpus, include_dashboard=False, configure_logging=False)
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    try:
        yield True
    finally:
        ray.shutdown()


def ray_worker_threads(threads: int) -> int:
    """torch's thread count in a Ray worker with the actor's CPUs (the actor itself is gone by now)."""

    @ray.remote(num_cpus=threads)
    def torch_thread_count() -> int:
        return torch.get_num_threads()

    return ray.get(torch_thread_count.remote())


def run_ray_job(job, threads: int, gpus: int = 0, distribute=None) -> dict:
    """Run the job on a local Ray; wall-clock times (time.time) of its phases, comparable to file mtimes.

    ``distribute``: as ``run_job``'s (the GPU check's warmed-up actors with a ready deadline).
    """
    started = time.time()
    with local_ray(threads, gpus) as owned:
        ray_ready = time.time()
        summary = run_job(job, distribute=distribute)
        job_done = time.time()
        if summary.failed or summary.stats.rows == 0:
            raise RuntimeError(f"the labelling job did not label every shard, so there is nothing to compare:\n{summary.format()}")
        worker_threads = ray_worker_threads(threads)  # not part of the job: left out of its time
        shutdown_started = time.time()
    return {"summary": summary, "started": started, "ray_ready": ray_ready, "job_done": job_done,
            "ray_shutdown": time.time() - shutdown_started, "ray_started_here": owned,
            "actor_torch_threads": worker_threads}


def steady_state_window(output: str) -> tuple[float, float, list]:
    """(first shard's start, last marker written) as wall-clock times, and the markers.

    A marker's file time is when the actor committed its shard; minus the shard's own
    ``stats.wall_seconds`` (open to marker, measured in the actor) it is when the shard started.
    """
    layout = OutputLayout(output)
    markers = load_markers(layout)
    written = {m.shard: layout.fs.info(layout.marker_path(m.shard))["mtime"] for m in markers}
    first = min(markers, key=lambda m: written[m.shard])
    return written[first.shard] - first.stats.wall_seconds, max(written.values()), markers


def job_rows(output: str) -> dict[str, dict]:
    return {row["key"]: row for row in iter_rows(output, columns=["key", "status", "labels"])}


def identical_label_pixels(rows: dict[str, dict], results: dict) -> float:
    same = total = 0
    for key, result in results.items():
        row = rows.get(key)
        if row is None or row["status"] != "ok":
            total += result.labels.size
            continue
        labels = decode_label_png(row["labels"]["bytes"])
        same += int(np.sum(labels == result.labels)) if labels.shape == result.labels.shape else 0
        total += result.labels.size
    return same / total


# -- report ----------------------------------------------------------------------------------------


def job_report(timing: dict, output: str, images: int) -> dict:
    summary = timing["summary"]
    first_start, last_commit, markers = steady_state_window(output)
    steady = last_commit - first_start
    end_to_end = timing["job_done"] - timing["started"] + timing["ray_shutdown"]
    stats = summary.stats
    busy = stats.wall_seconds  # the shards' open-to-marker times, added up
    return {
        "rows": stats.rows,
        "ok": stats.ok,
        "shards": summary.labelled,
        "failed_shards": len(summary.failed),
        "end_to_end_seconds": end_to_end,
        "end_to_end_images_per_second": images / end_to_end,
        "steady_state_seconds": steady,
        "steady_state_images_per_second": stats.rows / steady,
        "ray_started_here": timing["ray_started_here"],
        "actor_torch_threads": timing["actor_torch_threads"],
        "phases_seconds": {
            "ray start": timing["ray_ready"] - timing["started"],
            # plan, actor process, imports, model load, first shard handed over
            "actor start and model load": first_start - timing["ray_ready"],
            "shards (steady state)": steady,
            # the last marker reaching the driver, actor killed, manifest, _SUCCESS
            "finish": timing["job_done"] - last_commit,
            "ray shutdown": timing["ray_shutdown"],
        },
        "steady_state_breakdown_seconds": {
            "segment_batch": stats.segment_seconds,
            # waiting for the next row, model excluded: decoding not hidden by the reader thread, row encoding
            "read, decode, row encoding": stats.read_seconds,
            "parquet write": stats.write_seconds,
            "other in shard": max(busy - stats.segment_seconds - stats.read_seconds - stats.write_seconds, 0.0),
            # after each shard's clock stopped: data file and marker committed, the next shard handed over
            "commit, next shard": max(steady - busy, 0.0),
        },
        "segment_seconds_per_image": stats.segment_seconds / stats.rows if stats.rows else None,
        # The efficiency if segment_batch ran as fast in the actor as in the bare loop: what the
        # pipeline itself costs, nearly free of the machine's noise (both are timed in the actor).
        "segment_share_of_steady_state": stats.segment_seconds / steady,
        "markers": len(markers),
    }


def run(args: argparse.Namespace) -> dict:
    config = EmerDiffConfig(num_masks=args.num_masks, resolution=args.resolution)
    with tempfile.TemporaryDirectory(prefix="emerdiff-pipeline-bench-") as scratch:
        scratch = Path(scratch)
        (scratch / "model").mkdir()
        model = model_folder(args.shape, scratch / "model")
        urls, shards = input_shards(args.images, args.images_per_shard, scratch)
        job = LabelJobConfig(
            inputs=tuple(urls), output=str(scratch / "labels"), model=model, method=config, device="cpu",
            batch_size=args.batch_size, executor="ray", num_actors=1, accelerator="cpu", cpus_per_actor=args.threads,
        )
        with torch_threads(args.threads):
            segmenter = EmerDiffSegmenter.from_pretrained(model, config=config, device="cpu")
            before = bare_loop(segmenter, shards, args.batch_size)
            timing = run_ray_job(job, args.threads)
            after = bare_loop(segmenter, shards, args.batch_size)
            encode = row_encode_seconds(after["results"])
            agreement = identical_label_pixels(job_rows(job.output), after["results"])
            report_job = job_report(timing, job.output, args.images)
        probability_layers = len(segmenter.denoiser.state.probability_layers)
    if report_job["actor_torch_threads"] != args.threads:
        logger.warning("the actor ran %d torch threads, the bare loop %d: the comparison is not like for like "
                       "(a reused Ray keeps its own OMP_NUM_THREADS; run without one)",
                       report_job["actor_torch_threads"], args.threads)

    bare_seconds = statistics.mean([before["seconds"], after["seconds"]])
    bare_rate = args.images / bare_seconds
    report = {
        "shape": args.shape, "resolution": args.resolution, "num_masks": args.num_masks, "images": args.images,
        "images_per_shard": args.images_per_shard, "shards": len(urls), "batch_size": args.batch_size,
        "threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "probability_layers": probability_layers,
        "bare": {
            "runs_seconds": [before["seconds"], after["seconds"]],
            "runs_images_per_second": [before["images_per_second"], after["images_per_second"]],
            "images_per_second": bare_rate,
            "seconds_per_image": bare_seconds / args.images,
            "decode_seconds_per_image": statistics.mean([before["decode_seconds"], after["decode_seconds"]]) / args.images,
            "row_encode_seconds_per_image": encode,
        },
        "job": report_job,
        "identical_label_pixels": agreement,
    }
    report["efficiency"] = report_job["steady_state_images_per_second"] / bare_rate
    report["end_to_end_efficiency"] = report_job["end_to_end_images_per_second"] / bare_rate
    # Against each bare run alone: how far apart they are is the noise of this machine.
    report["efficiency_range"] = sorted(
        report_job["steady_state_images_per_second"] / rate for rate in report["bare"]["runs_images_per_second"]
    )
    report["model_time_ratio"] = (report["bare"]["seconds_per_image"] - report["bare"]["decode_seconds_per_image"]) / (
        report_job["segment_seconds_per_image"] or math.inf)
    return report


def print_table(report: dict) -> None:
    job, bare = report["job"], report["bare"]
    print(f"\nPipeline benchmark: shape={report['shape']} {report['resolution']}px K={report['num_masks']}, "
          f"{report['images']} images in {report['shards']} shard(s), batch {report['batch_size']}, "
          f"{report['threads']} thread(s) (actor: {job['actor_torch_threads']})")
    print(f"{'':<34}{'img/s':>9}{'s/img':>9}{'efficiency':>12}")
    print(f"{'bare segment_batch loop (mean)':<34}{bare['images_per_second']:>9.4f}{1 / bare['images_per_second']:>9.3f}{'1':>12}")
    for index, rate in enumerate(bare["runs_images_per_second"]):
        print(f"{'  run ' + ('before' if index == 0 else 'after') + ' the job':<34}{rate:>9.4f}{1 / rate:>9.3f}")
    for label, rate, efficiency in (
        ("Ray job, steady state", job["steady_state_images_per_second"], report["efficiency"]),
        ("Ray job, end to end", job["end_to_end_images_per_second"], report["end_to_end_efficiency"]),
    ):
        print(f"{label:<34}{rate:>9.4f}{1 / rate:>9.3f}{efficiency:>12.3f}")
    low, high = report["efficiency_range"]
    print(f"steady-state efficiency against each bare run: {low:.3f} .. {high:.3f}")
    print(f"rows {job['rows']} of {report['images']} images ({job['ok']} ok), "
          f"identical label pixels bare vs job: {report['identical_label_pixels']:.5f}")
    print("\nJob phases (s):")
    for phase, seconds in job["phases_seconds"].items():
        print(f"  {phase:<30}{seconds:>9.2f}")
    print("Steady state, where the actor's time went (s):")
    for part, seconds in job["steady_state_breakdown_seconds"].items():
        print(f"  {part:<30}{seconds:>9.2f}  {seconds / job['steady_state_seconds']:>6.1%}")
    print(f"segment_batch share of the steady state: {job['segment_share_of_steady_state']:.4f} "
          "(the efficiency if it ran as fast in the actor as in the bare loop)")
    print(f"segment_batch s/img: bare {bare['seconds_per_image'] - bare['decode_seconds_per_image']:.3f}, "
          f"actor {job['segment_seconds_per_image']:.3f} (ratio {report['model_time_ratio']:.3f}); "
          f"per image, decode {bare['decode_seconds_per_image'] * 1000:.1f} ms, "
          f"row encoding {bare['row_encode_seconds_per_image'] * 1000:.1f} ms (measured in the bare process)")


def main(argv=None) -> int:
    return benchmark_main(argv, parse_args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
