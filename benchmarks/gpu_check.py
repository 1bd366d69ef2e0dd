"""Everything a first GPU should answer, in one command: one JSON file and one printed table.

    python -m benchmarks.gpu_check --json gpu_check.json     # CUDA: SD 1.x's architecture, 512 px, K = 25, fp16
    python -m benchmarks.gpu_check --smoke --json smoke.json  # the same code on a CPU with the tiny model (CI)

The model is a random-weight model of SD 1.x's exact architecture built on the device (no download:
the GPU machine needs only this repository and its install). Sections, each recording its error
and letting the others run (``{"error": ...}``), or ``{"skipped": why}`` when the time budget is spent:

- ``environment``: device, versions, the device's dense fp16 peak (a table of known GPUs), the
  float32 precision flags and the CUDA allocator settings in use.
- ``production``: seconds per image of ``segment_batch`` (warm, median of the timed images) at
  batch 1 and the best of ``batch_sizes``, with seconds per stage (features, k-means, inversion,
  modulated runs, decodes), peak device memory against the planner's estimate, and the memory plan
  (chunk sizes, attention_replay layers).
- ``flops``: FLOPs per image per stage (``torch.utils.flop_counter``, one instrumented image) and
  the achieved TFLOP/s of each stage and of the whole, next to the device's peak.
- ``clip``: the CLIP stage of ``label --clip-model`` (a random CLIP of ViT-B/16's shapes at 448 px,
  in the base dtype): seconds per image on the timed images and their label maps, FLOPs per image
  (meta device) and their share of the image's total with the method's.
- ``precision``: labels of other dtypes against the base dtype's (fp32 and bf16 against fp16 on a
  GPU), and of true float32 convolutions against TF32 ones (``tf32=false``, the config's other choice).
- ``reference``: the slow reference (``emerdiff.reference``) against production on one image at small K.
- ``ray``: a labelling job through Ray with one actor on local shards against the bare ``segment_batch``
  loop (benchmarks/pipeline_bench.py's functions), both warmed up alike.
- ``runtime_options``: channels_last, attention_replay="query_key" (the path of 24-48 GB cards) and
  torch_compile, each in a child process with its own timeout, started only if its estimated time
  (a compile budget per compiled part, or what this run measured) fits the time left: seconds per
  image and labels against the base.

The JSON is written after every section (and every runtime option), with ``"complete": false`` and
the section under way in ``"running"`` until the end: a run that is killed or hangs leaves what it
measured. Stage times come from wrapping the segmenter's stage methods here, synchronising CUDA
around each: the production code is not instrumented.
"""

from __future__ import annotations

import os

# Before torch touches CUDA: the caching allocator grows its segments instead of reserving a new
# block per size (decodes hold ~12 GiB tensors beside ~7 GiB temporaries). The child processes of
# the runtime options inherit it; the Ray actors get it from pipeline.distributors.actor_options.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse
import dataclasses
import gc
import json
import logging
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.models import random_parts, save_random_model
from benchmarks.segment_bench import StageMeter, instrument_production
from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff.segmenter import float32_precision

logger = logging.getLogger("benchmarks.gpu_check")

REPOSITORY = Path(__file__).resolve().parent.parent
PHOTOS = REPOSITORY / "samples" / "photos"

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; the
# first name contained in torch.cuda.get_device_name() wins, so more specific names come first.
PEAK_TFLOPS_FP16 = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
    "T4": 65.0,
}

# (name in the table, stage method's owner attribute or None for the segmenter, method name)
STAGES = (
    ("encode", None, "_encode"),
    ("features", None, "_features"),
    ("k-means", None, "_lowres_labels"),
    ("inversion", "denoiser", "invert"),
    ("modulated runs", "denoiser", "modulated_runs"),
    ("decodes", None, "_decode"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    shape: str
    config: EmerDiffConfig
    device: str
    dtype: str  # the base dtype everything else is compared with
    timed_images: int  # median over these, after one warm image
    batch_sizes: tuple[int, ...]  # besides 1, for the best batch
    precision_variants: tuple[tuple[str, str, dict, int], ...]  # (name, dtype, config changes, images) against the base
    reference_masks: int
    option_images: int
    options: tuple[tuple[str, dict], ...]
    ray_images: int
    ray_images_per_shard: int
    budget_seconds: float
    needs_seconds: dict  # rough seconds each section needs; it starts only if they are left
    child_start_seconds: float  # a runtime option's process: imports, CUDA start, the model built
    compile_seconds: dict  # cold compile of each torch_compile part, until this run measures it
    clip: tuple[str, int]  # the CLIP stage's random model shape (benchmarks/models.py) and resolution


FULL = Settings(
    shape="sd15", config=EmerDiffConfig(), device="cuda", dtype="float16", timed_images=3, batch_sizes=(2, 4),
    # fp32 is several times slower than fp16 at SD's size: one image is enough for a share of pixels.
    precision_variants=(("float32", "float32", {}, 1), ("bfloat16", "bfloat16", {}, 2),
                        ("tf32=false", "float16", {"tf32": False}, 2)),
    reference_masks=4, option_images=2,
    # Cheapest and most needed first: query_key is what 24-48 GB cards run; compiling comes last.
    options=(("attention_replay=query_key", {"attention_replay": "query_key"}),
             ("channels_last", {"channels_last": True}),
             ("torch_compile=unet", {"torch_compile": "unet"}),
             ("channels_last+torch_compile=unet+vae", {"channels_last": True, "torch_compile": "unet+vae"})),
    ray_images=4, ray_images_per_shard=2, budget_seconds=8 * 60,
    # Estimates for an H100/H200 (none measured yet): docs/performance.md, "GPU check".
    needs_seconds={"environment": 0, "production": 60, "flops": 15, "clip": 15, "precision": 60, "reference": 40,
                   "ray": 90, "runtime_options": 0},  # runtime options: each is checked against what is left
    child_start_seconds=30, compile_seconds={"unet": 150, "vae": 120}, clip=("vitb16", 448),
)
SMOKE = Settings(
    shape="tiny",
    config=EmerDiffConfig(num_masks=2, resolution=128, feature_samples=1, kmeans_restarts=1, modulation_timestep=61),
    device="cpu", dtype="float32", timed_images=1, batch_sizes=(2,),
    precision_variants=(("float16", "float16", {}, 1), ("bfloat16", "bfloat16", {}, 1),
                        ("tf32=false", "float32", {"tf32": False}, 1)),
    reference_masks=2, option_images=1,
    # Compiling takes minutes on a CPU: the smoke run times channels_last and query_key only.
    options=(("channels_last", {"channels_last": True}), ("attention_replay=query_key", {"attention_replay": "query_key"})),
    ray_images=2, ray_images_per_shard=1,
    # Not a budget to keep (CI machines are slow and shared): only a guard against a hung section.
    budget_seconds=900, needs_seconds=dict.fromkeys(FULL.needs_seconds, 0), child_start_seconds=90,
    compile_seconds={"unet": 600, "vae": 300}, clip=("tiny", 64),
)
COMPILED_PARTS = {"none": (), "unet": ("unet",), "vae": ("vae",), "unet+vae": ("unet", "vae")}
ACTOR_READY_SECONDS = 120  # the Ray section fails, saying why, if no actor has loaded its model by then


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny model on the CPU, seconds per section: CI's check that this script runs.")
    parser.add_argument("--json", type=Path, default=None, help="Write the report here, after every section.")
    parser.add_argument("--budget-seconds", type=float, default=None,
                        help="Time the whole check may take (default: 480 on a GPU); sections and runtime options that "
                             "would not fit are skipped. Give more to let both torch_compile options run.")
    # How the check runs each runtime option in a process of its own; not for people.
    parser.add_argument("--option", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--option-dir", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- helpers -------------------------------------------------------------------------------------


def photos(count: int) -> list[Image.Image]:
    files = sorted(PHOTOS.glob("*.jpg"))
    if not files:
        raise FileNotFoundError(f"no sample photos in {PHOTOS}")
    return [Image.open(files[i % len(files)]).convert("RGB") for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Free what deleted segmenters held, so the next one plans with the whole device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_segmenter(settings: Settings, dtype: str, **changes) -> EmerDiffSegmenter:
    """A random model of ``settings.shape`` (seed 0: the same weights every time), built on the device itself."""
    device = torch.device(settings.device)
    with torch.device(device):  # random init on the GPU: seconds, not the CPU's minutes at SD's size
        parts = random_parts(settings.shape, seed=0)
    return EmerDiffSegmenter(parts, settings.config.replace(**changes), device, getattr(torch, dtype))


class StageClock:
    """Seconds per stage, from the segmenter's stage methods wrapped on this instance only."""

    def __init__(self, segmenter: EmerDiffSegmenter):
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = segmenter.device
        for stage, owner, method in STAGES:
            target = segmenter if owner is None else getattr(segmenter, owner)
            setattr(target, method, self._timed(stage, getattr(target, method)))

    def _timed(self, stage: str, original):
        def timed(*args, **kwargs):
            synchronize(self.device)
            started = time.perf_counter()
            result = original(*args, **kwargs)
            synchronize(self.device)
            self.seconds[stage] += time.perf_counter() - started
            return result

        return timed

    def reset(self) -> None:
        self.seconds.clear()


def timed_segment(segmenter, images: list, clock: StageClock | None = None) -> tuple[float, dict, list]:
    """(seconds per image, stage seconds per image, results) of one segment_batch call."""
    if clock:
        clock.reset()
    synchronize(segmenter.device)
    started = time.perf_counter()
    results = segmenter.segment_batch(images)
    synchronize(segmenter.device)
    seconds = (time.perf_counter() - started) / len(images)
    stages = {stage: value / len(images) for stage, value in (clock.seconds if clock else {}).items()}
    return seconds, stages, results


def agreement(labels: list[np.ndarray], base: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(a == b) for a, b in zip(labels, base)]))


def median_stages(runs: list[dict]) -> dict:
    return {stage: statistics.median(run.get(stage, 0.0) for run in runs) for stage in runs[0]}


# -- sections ------------------------------------------------------------------------------------


def environment(settings: Settings, state: dict) -> dict:
    import diffusers
    import transformers

    device = torch.device(settings.device)
    report = {"device": str(device), "torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "shape": settings.shape, "resolution": settings.config.resolution,
              "num_masks": settings.config.num_masks, "feature_samples": settings.config.feature_samples,
              "dtype": settings.dtype, "cpu_threads": torch.get_num_threads(), "tf32": settings.config.tf32,
              # What float32 convolutions and matrix multiplies run as in the base segmenter, on this device.
              **float32_precision(device.type, settings.config.tf32),
              "pytorch_cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        report.update(device_name=name, device_memory_bytes=torch.cuda.get_device_properties(device).total_memory,
                      cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                      peak_tflops_fp16_dense=next((peak for key, peak in PEAK_TFLOPS_FP16.items() if key in name), None))
    else:
        report.update(device_name="cpu", peak_tflops_fp16_dense=None)
    state["peak_tflops"] = report["peak_tflops_fp16_dense"]
    return report


def production(settings: Settings, state: dict) -> dict:
    device = torch.device(settings.device)
    segmenter = build_segmenter(settings, settings.dtype)
    try:
        report = _production(settings, state, segmenter)
        state["flops_segmenter"] = segmenter  # flops, next, counts on this one; run() releases it after
        return report
    finally:
        del segmenter  # a failure's traceback keeps this frame: the model must not stay on the device with it
        release(device)


def _production(settings: Settings, state: dict, segmenter: EmerDiffSegmenter) -> dict:
    device = torch.device(settings.device)
    clock = StageClock(segmenter)
    images = photos(max(settings.timed_images, max(settings.batch_sizes, default=1)))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        weights = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    first_seconds, _, _ = timed_segment(segmenter, images[:1])  # warm-up: kernels chosen, caches filled
    runs, labels = [], []
    for image in images[: settings.timed_images]:
        seconds, stages, results = timed_segment(segmenter, [image], clock)
        runs.append({"total": seconds, **stages})
        labels.append(results[0].labels)
    per_stage = median_stages(runs)
    report = {
        "first_image_seconds": first_seconds,
        "seconds_per_image": per_stage.pop("total"),
        "runs_seconds_per_image": [run["total"] for run in runs],
        "stage_seconds_per_image": per_stage,
        "memory_plan": segmenter.memory_plan.to_dict(),
        "probability_layers": len(segmenter.denoiser.state.probability_layers),
        "attention_replay": segmenter.config.attention_replay,
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - weights
        report.update(peak_memory_bytes=torch.cuda.max_memory_allocated(device), peak_above_weights_bytes=peak,
                      estimate_over_measured=segmenter.memory_plan.estimated_peak_bytes / peak)
    batches = {}
    for batch in settings.batch_sizes:
        timed_segment(segmenter, images[:batch])  # warm at this batch's shapes
        batches[batch] = timed_segment(segmenter, images[:batch], clock)[0]
    batches[1] = report["seconds_per_image"]
    best = min(batches, key=batches.get)
    report.update(batch_seconds_per_image={str(b): s for b, s in sorted(batches.items())}, best_batch=best,
                  best_batch_seconds_per_image=batches[best],
                  # What the stages used in the end: smaller than the plan's if memory ran out.
                  chunks_in_use={"unet": segmenter.chunks.unet, "decode": segmenter.chunks.decode})
    # Kept for the sections after: the base labels and the stage times.
    state.update(base_labels=labels, images=images[: settings.timed_images], stage_seconds=per_stage,
                 seconds_per_image=report["seconds_per_image"], best_batch=best)
    return report


def flops(settings: Settings, state: dict) -> dict:
    """FLOPs per stage of one image (counted on the device, same segmenter), and what they mean per second."""
    segmenter = state.pop("flops_segmenter")
    try:
        meter = StageMeter(count_flops=True)  # benchmarks/segment_bench.py: the same stages, counted
        instrument_production(segmenter, meter)
        meter.count_calls(segmenter.denoiser.unet, segmenter.vae.decoder)
        segmenter.segment_batch(state["images"][:1])
    finally:
        del segmenter
        release(torch.device(settings.device))
    counts = meter.per_image(1)
    counted = {stage: flops for stage, flops in counts["flops"].items() if flops}
    seconds = state["stage_seconds"]
    total = counts["flops_total"]
    report = {
        "flops_per_image": total,
        "flops_per_stage": counted,
        "unet_passes_per_image": counts["unet_passes_total"],
        "vae_decodes_per_image": counts["vae_decodes_total"],
        "achieved_tflops": total / state["seconds_per_image"] / 1e12,
        "achieved_tflops_per_stage": {stage: counted[stage] / seconds[stage] / 1e12
                                      for stage in counted if seconds.get(stage)},
        "peak_tflops_fp16_dense": state.get("peak_tflops"),
    }
    if state.get("peak_tflops"):
        report["share_of_peak"] = report["achieved_tflops"] / state["peak_tflops"]
    state["flops_per_image"] = total
    return report


def clip(settings: Settings, state: dict) -> dict:
    """The CLIP stage on the timed images and their label maps; FLOPs counted on the meta device."""
    from benchmarks.models import random_clip
    from benchmarks.segment_bench import clip_flops
    from emerdiff.clip import SegmentCLIP
    from emerdiff.loading import resolve_dtype

    device = torch.device(settings.device)
    shape, resolution = settings.clip
    with torch.device(device):
        parts = random_clip(shape)
    model = SegmentCLIP(parts, resolution, device, resolve_dtype(settings.dtype, device))
    try:
        images, maps = state["images"], state["base_labels"]
        num_masks = settings.config.num_masks
        model.segment_embeddings_batch(images[:1], maps[:1], num_masks)  # warm-up
        runs = []
        for image, labels in zip(images, maps):
            synchronize(device)
            started = time.perf_counter()
            model.segment_embeddings_batch([image], [labels], num_masks)
            synchronize(device)
            runs.append(time.perf_counter() - started)
    finally:
        del model, parts
        release(device)
    flops = clip_flops(shape, resolution)
    report = {"shape": shape, "resolution": resolution, "seconds_per_image": statistics.median(runs),
              "runs_seconds_per_image": runs, "flops_per_image": flops}
    method = state.get("flops_per_image")
    if method:
        report["share_of_image_flops"] = flops / (method + flops)
    if state.get("seconds_per_image"):
        report["share_of_image_seconds"] = report["seconds_per_image"] / (state["seconds_per_image"] + report["seconds_per_image"])
    return report


def precision(settings: Settings, state: dict) -> dict:
    """Each variant (another dtype, or the other float32-convolution choice) against the base's labels."""
    base = state["base_labels"]
    report = {"base_dtype": settings.dtype, "base_tf32": settings.config.tf32,
              "base_decodes_seconds_per_image": state["stage_seconds"].get("decodes")}
    for name, dtype, changes, count in settings.precision_variants:
        segmenter = build_segmenter(settings, dtype, **changes)
        try:
            clock = StageClock(segmenter)
            images = state["images"][:count]
            timed_segment(segmenter, images[:1])  # warm
            results, seconds, decodes = [], [], []
            for image in images:
                second, stages, result = timed_segment(segmenter, [image], clock)
                results.append(result[0].labels)
                seconds.append(second)
                decodes.append(stages["decodes"])
        finally:
            del segmenter
            release(torch.device(settings.device))
        report[name] = {"dtype": dtype, **changes, "images": len(images),
                        "identical_label_pixels": agreement(results, base[: len(images)]),
                        "seconds_per_image": statistics.median(seconds),
                        "decodes_seconds_per_image": statistics.median(decodes)}
        state["checkpoint"]("precision", report)
    return report


def reference(settings: Settings, state: dict) -> dict:
    """Production (base dtype) and the fp32 reference upsample the same low-res masks of one image at small K."""
    from emerdiff.reference import ReferenceEmerDiff

    device = torch.device(settings.device)
    config = settings.config.replace(num_masks=settings.reference_masks)
    image = state["images"][0]
    segmenter = build_segmenter(settings, settings.dtype, num_masks=settings.reference_masks)
    try:
        lowres = segmenter.segment(image).lowres_labels
        started = time.perf_counter()
        production_labels = segmenter.upsample(image, lowres).labels
        synchronize(device)
        production_seconds = time.perf_counter() - started
    finally:
        del segmenter
        release(device)
    with torch.device(device):  # the same fp32 weights the production model was cast from, made on the device
        parts = random_parts(settings.shape, seed=0)
    # Built outside that block: the reference's own ᾱ table is computed on the CPU, as the scheduler's is.
    slow = ReferenceEmerDiff(parts, config, device)
    del parts
    try:
        started = time.perf_counter()
        reference_labels = slow.upsample(image, lowres)
        synchronize(device)
        reference_seconds = time.perf_counter() - started
    finally:
        del slow
        release(device)
    return {"num_masks": settings.reference_masks, "production_dtype": settings.dtype, "reference_dtype": "float32",
            "identical_label_pixels": agreement([production_labels], [reference_labels]),
            "production_upsample_seconds": production_seconds, "reference_upsample_seconds": reference_seconds}


def warm_actor_class(images: list[Image.Image]) -> type:
    """LabelActor that segments ``images`` once after loading its model, as the bare loop is warmed up."""
    from pipeline.distributors import LabelActor

    class WarmLabelActor(LabelActor):
        def __init__(self, job, log_level: int = logging.WARNING):
            super().__init__(job, log_level)
            self.labeler.segmenter.segment_batch(images)

    return WarmLabelActor


def ray_job(settings: Settings, state: dict) -> dict:
    """One actor labels generated shards on local disk; the bare segment_batch loop labels the same images.

    Both are warmed up alike (one image at batch 1) before anything is timed, so that ``efficiency``
    compares like with like. No actor ready within ACTOR_READY_SECONDS fails the section, saying why.
    """
    from benchmarks.pipeline_bench import bare_loop, identical_label_pixels, input_shards, job_report, job_rows, run_ray_job
    from pipeline.config import LabelJobConfig
    from pipeline.distributors import run_on_ray

    device = torch.device(settings.device)
    batch = state.get("best_batch", 2)
    warm_up = photos(1)
    with tempfile.TemporaryDirectory(prefix="emerdiff-gpu-check-") as scratch:
        scratch = Path(scratch)
        with torch.device(device):
            model = str(save_random_model(settings.shape, scratch / "model"))
        urls, shards = input_shards(settings.ray_images, settings.ray_images_per_shard, scratch)
        job = LabelJobConfig(
            inputs=tuple(urls), output=str(scratch / "labels"), model=model, method=settings.config, device=settings.device,
            dtype=settings.dtype, batch_size=batch, executor="ray", num_actors=1,
            accelerator="gpu" if device.type == "cuda" else "cpu", cpus_per_actor=1,
        )
        segmenter = EmerDiffSegmenter.from_pretrained(model, config=settings.config, device=device, dtype=settings.dtype)
        try:
            timed_segment(segmenter, warm_up)
            bare = bare_loop(segmenter, shards, batch)
        finally:
            del segmenter
            release(device)  # the actor is another process: it plans with what this one leaves free

        def warmed_actors(queue, on_progress):
            return run_on_ray(queue, job, on_progress, actor_class=warm_actor_class(warm_up),
                              ready_timeout=ACTOR_READY_SECONDS)

        gpus = torch.cuda.device_count() if device.type == "cuda" else 0  # Ray's own detection can miss them
        timing = run_ray_job(job, threads=1, gpus=gpus, distribute=warmed_actors)
        job_summary = job_report(timing, job.output, settings.ray_images)
        same = identical_label_pixels(job_rows(job.output), bare["results"])
    return {
        "images": settings.ray_images, "shards": len(urls), "batch_size": batch, "gpus_given_to_ray": gpus,
        "bare_images_per_second": bare["images_per_second"],
        "job_steady_state_images_per_second": job_summary["steady_state_images_per_second"],
        "job_end_to_end_images_per_second": job_summary["end_to_end_images_per_second"],
        "efficiency": job_summary["steady_state_images_per_second"] / bare["images_per_second"],
        "segment_share_of_steady_state": job_summary["segment_share_of_steady_state"],
        "phases_seconds": job_summary["phases_seconds"],
        "identical_label_pixels": same,
    }


def runtime_options(settings: Settings, state: dict) -> dict:
    """Each option in a child process with its own timeout, started only if its estimated time is left."""
    report = {"off": {"seconds_per_image": state["seconds_per_image"]}}
    state.setdefault("compile_seconds", {})
    for name, changes in settings.options:
        needed = option_seconds(settings, changes, state)
        left = state["deadline"] - time.perf_counter()
        if needed > left:
            report[name] = {"skipped": f"time budget: {left:.0f} s left, this option needs about {needed:.0f} s",
                            "estimated_seconds": needed}
        else:
            report[name] = run_option(settings, name, changes, state, timeout=min(2 * needed, left))
        state["checkpoint"]("runtime_options", report)
    return report


def option_seconds(settings: Settings, changes: dict, state: dict) -> float:
    """A child's start, its compiles (this run's measurement, else the budget), and its images."""
    parts = COMPILED_PARTS[changes.get("torch_compile", "none")]
    compiling = sum(state["compile_seconds"].get(part, settings.compile_seconds[part]) for part in parts)
    return settings.child_start_seconds + compiling + (settings.option_images + 1) * state["seconds_per_image"]


def run_option(settings: Settings, name: str, changes: dict, state: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="emerdiff-gpu-check-option-") as folder:
        folder = Path(folder)
        command = [sys.executable, "-m", "benchmarks.gpu_check", "--option", name, "--option-dir", str(folder)]
        if settings.device == "cpu":
            command.append("--smoke")
        started = time.perf_counter()
        outcome = run_child(command, folder / "log.txt", timeout)
        if outcome is not None:
            return {"error": outcome, "timeout_seconds": timeout, "process_seconds": time.perf_counter() - started}
        result = json.loads((folder / "result.json").read_text())
        with np.load(folder / "labels.npz") as saved:
            labels = [saved[f"arr_{index}"] for index in range(len(saved.files))]  # np.savez's names, in order
    result.update(identical_label_pixels=agreement(labels, state["base_labels"][: len(labels)]),
                  speedup=state["seconds_per_image"] / result["seconds_per_image"], timeout_seconds=timeout,
                  process_seconds=time.perf_counter() - started)
    parts = COMPILED_PARTS[changes.get("torch_compile", "none")]
    if len(parts) == 1:  # what compiling this part took here replaces the budget for later options
        state["compile_seconds"][parts[0]] = max(result["first_image_seconds"] - result["seconds_per_image"], 0.0)
    return result


def run_child(command: list[str], log: Path, timeout: float) -> str | None:
    """Run ``command`` in its own process group; None if it succeeded, else why not (the log's end)."""
    with open(log, "w") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                 cwd=REPOSITORY)  # where ``-m benchmarks.gpu_check`` resolves
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # compile workers included
            child.wait()
            return f"timed out after {timeout:.0f} s and was killed"
    if returncode == 0:
        return None
    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
    return f"exited with status {returncode}: " + " | ".join(tail)


def option_child(settings: Settings, name: str, folder: Path) -> int:
    """The child's side of ``run_option``: the option's first image (compiling, if it does) and its timed images."""
    changes = dict(settings.options)[name]
    segmenter = build_segmenter(settings, settings.dtype, **changes)
    images = photos(settings.option_images)
    first, _, _ = timed_segment(segmenter, images[:1])
    runs = [timed_segment(segmenter, [image]) for image in images]
    (folder / "result.json").write_text(json.dumps({
        "first_image_seconds": first, "seconds_per_image": statistics.median(seconds for seconds, _, _ in runs),
        "chunks_in_use": {"unet": segmenter.chunks.unet, "decode": segmenter.chunks.decode}}))
    np.savez(folder / "labels.npz", *[results[0].labels for _, _, results in runs])
    return 0


SECTIONS = {
    "environment": environment,
    "production": production,
    "flops": flops,
    "clip": clip,
    "precision": precision,
    "reference": reference,
    "ray": ray_job,
    "runtime_options": runtime_options,  # last: compiling is the slowest and least certain
}


def failure(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=-3)}


def run(settings: Settings, json_path: Path | None = None) -> dict:
    """Every section in order; the report is written to ``json_path`` at the start and after each section."""
    started = time.perf_counter()
    device = torch.device(settings.device)
    report = {"settings": {"smoke": settings.shape == SMOKE.shape, "budget_seconds": settings.budget_seconds},
              "complete": False, "running": None}

    def checkpoint(name: str, partial: dict) -> None:
        report[name] = {**partial, "unfinished": True}
        write_report(json_path, report)

    state = {"deadline": started + settings.budget_seconds, "checkpoint": checkpoint}
    for name, section in SECTIONS.items():
        elapsed = time.perf_counter() - started
        needed = settings.needs_seconds.get(name, 0)
        if elapsed + needed > settings.budget_seconds:
            report[name] = {"skipped": f"time budget: {elapsed:.0f} s spent of {settings.budget_seconds:.0f}, needs about {needed} s"}
        else:
            report["running"] = name
            write_report(json_path, report)
            section_started = time.perf_counter()
            try:
                report[name] = section(settings, state)
            except Exception as error:  # a section that fails must not stop the others; its error is the result
                logger.exception("section %s failed", name)
                report[name] = failure(error)
                # The traceback's frames hold the section's segmenter (as an argument of the call that
                # failed) for as long as anything keeps the error, a log record for one: drop their locals.
                traceback.clear_frames(error.__traceback__)
            report[name]["section_seconds"] = time.perf_counter() - section_started
        if name != "production":  # only flops, right after it, uses production's segmenter
            state.pop("flops_segmenter", None)
        release(device)
        report["running"] = None
        write_report(json_path, report)
    report.update(complete=True, total_seconds=time.perf_counter() - started)
    write_report(json_path, report)
    return report


def write_report(path: Path | None, report: dict) -> None:
    """Replace ``path`` whole (a reader, or a kill, never sees half a file)."""
    if path is None:
        return
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(temp, path)


# -- table ---------------------------------------------------------------------------------------


def _rows(report: dict):
    env = report.get("environment", {})
    yield "device", env.get("device_name", env.get("error", "?"))
    prod = report.get("production", {})
    if "seconds_per_image" in prod:
        yield "s/image, batch 1 (median)", f"{prod['seconds_per_image']:.3f}"
        for stage, seconds in prod["stage_seconds_per_image"].items():
            yield f"  {stage}", f"{seconds:.3f}"
        yield f"s/image, best batch ({prod['best_batch']})", f"{prod['best_batch_seconds_per_image']:.3f}"
        plan = prod["memory_plan"]
        yield "memory plan", (f"chunk {plan['chunk_size']}, decode {plan['decode_chunk']}, "
                              f"{prod['probability_layers']} probability layers, estimate {plan['estimated_peak_bytes'] / 2**30:.2f} GiB")
        if "peak_above_weights_bytes" in prod:
            yield "peak memory above weights", f"{prod['peak_above_weights_bytes'] / 2**30:.2f} GiB (estimate/measured {prod['estimate_over_measured']:.2f})"
    clip_stage = report.get("clip", {})
    if "seconds_per_image" in clip_stage:
        share = f", {clip_stage['share_of_image_flops']:.1e} of the FLOPs" if "share_of_image_flops" in clip_stage else ""
        yield (f"CLIP stage ({clip_stage['shape']}, {clip_stage['resolution']} px)",
               f"{clip_stage['seconds_per_image']:.3f} s/image, {clip_stage['flops_per_image'] / 1e12:.3f} TFLOP{share}")
    fl = report.get("flops", {})
    if "achieved_tflops" in fl:
        peak = fl.get("peak_tflops_fp16_dense")
        yield "achieved TFLOP/s", f"{fl['achieved_tflops']:.2f}" + (f" of {peak:.0f} ({fl['share_of_peak']:.1%})" if peak else "")
        for stage, value in fl["achieved_tflops_per_stage"].items():
            yield f"  {stage}", f"{value:.2f}"
    precision_report = report.get("precision", {})
    for variant, values in precision_report.items():
        if isinstance(values, dict) and "identical_label_pixels" in values:
            base = f"{precision_report['base_dtype']}, tf32={str(precision_report['base_tf32']).lower()}"
            yield (f"identical pixels {variant} vs {base}",
                   f"{values['identical_label_pixels']:.4f} ({values['seconds_per_image']:.3f} s/image, "
                   f"decodes {values['decodes_seconds_per_image']:.3f})")
    ref = report.get("reference", {})
    if "identical_label_pixels" in ref:
        yield f"identical pixels vs reference (K={ref['num_masks']})", f"{ref['identical_label_pixels']:.4f}"
    for name, values in report.get("runtime_options", {}).items():
        if isinstance(values, dict) and "speedup" in values:
            yield f"{name}", f"{values['seconds_per_image']:.3f} s/image, x{values['speedup']:.2f}, identical {values['identical_label_pixels']:.4f}"
    ray = report.get("ray", {})
    if "efficiency" in ray:
        yield "Ray job vs bare loop", (f"{ray['job_steady_state_images_per_second']:.3f} vs {ray['bare_images_per_second']:.3f} img/s "
                                       f"(efficiency {ray['efficiency']:.2f})")
    for name in SECTIONS:
        for problem in ("error", "skipped"):
            if problem in report.get(name, {}):
                yield f"{name} {problem}", report[name][problem]
    for name, values in report.get("runtime_options", {}).items():
        for problem in ("error", "skipped"):
            if isinstance(values, dict) and problem in values:
                yield f"runtime_options {name} {problem}", values[problem]
    if report.get("complete"):
        yield "total seconds", f"{report['total_seconds']:.0f}"
    else:
        yield "unfinished", f"stopped while running {report.get('running')}"


def print_table(report: dict) -> None:
    rows = list(_rows(report))
    width = max(len(name) for name, _ in rows)
    print("\nEmerDiff GPU check")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    if args.budget_seconds is not None:
        settings = dataclasses.replace(settings, budget_seconds=args.budget_seconds)
    if args.option:
        return option_child(settings, args.option, args.option_dir)
    report = run(settings, args.json)
    print_table(report)
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
