"""Everything a first GPU should answer, in one command: one JSON file and one printed table.

    python -m benchmarks.gpu_check --json gpu_check.json     # CUDA: SD 1.x's architecture, 512 px, K = 25, fp16
    python -m benchmarks.gpu_check --smoke --json smoke.json  # the same code on a CPU with the tiny model (CI)

The model is a random-weight model of SD 1.x's exact architecture built on the device (no download:
the GPU machine needs only this repository and its install). Sections, each recording its error
and letting the others run (``{"error": ...}``), or ``{"skipped": why}`` when the time budget is spent:

- ``environment``: device, versions, the device's dense fp16 peak (a table of known GPUs).
- ``production``: seconds per image of ``segment_batch`` (warm, median of the timed images) at
  batch 1 and the best of ``batch_sizes``, with seconds per stage (features, k-means, inversion,
  modulated runs, decodes), peak device memory against the planner's estimate, and the memory plan
  (chunk sizes, attention_replay layers).
- ``flops``: FLOPs per image per stage (``torch.utils.flop_counter``, one instrumented image) and
  the achieved TFLOP/s of each stage and of the whole, next to the device's peak.
- ``precision``: labels of other dtypes against the base dtype's (fp32 and bf16 against fp16 on a GPU).
- ``reference``: the slow reference (``emerdiff.reference``) against production on one image at small K.
- ``runtime_options``: channels_last and torch_compile, seconds per image and labels against the base.
- ``ray``: a labelling job through Ray with one actor on local shards against the bare ``segment_batch`` loop
  (benchmarks/pipeline_bench.py's functions).

Stage times come from wrapping the segmenter's stage methods here, synchronising CUDA around
each: the production code is not instrumented.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import statistics
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

logger = logging.getLogger("benchmarks.gpu_check")

PHOTOS = Path(__file__).resolve().parent.parent / "samples" / "photos"

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
    precision_images: dict  # other dtype -> images compared
    reference_masks: int
    option_images: int
    options: tuple[tuple[str, dict], ...]
    ray_images: int
    ray_images_per_shard: int
    budget_seconds: float


FULL = Settings(
    shape="sd15", config=EmerDiffConfig(), device="cuda", dtype="float16", timed_images=3, batch_sizes=(2, 4),
    # fp32 is several times slower than fp16 at SD's size: one image is enough for a share of pixels.
    precision_images={"float32": 1, "bfloat16": 2}, reference_masks=4, option_images=2,
    options=(("channels_last", {"channels_last": True}), ("torch_compile=unet", {"torch_compile": "unet"}),
             ("channels_last+torch_compile=unet+vae", {"channels_last": True, "torch_compile": "unet+vae"})),
    ray_images=4, ray_images_per_shard=2, budget_seconds=8 * 60,
)
SMOKE = Settings(
    shape="tiny",
    config=EmerDiffConfig(num_masks=2, resolution=128, feature_samples=1, kmeans_restarts=1, modulation_timestep=61),
    device="cpu", dtype="float32", timed_images=1, batch_sizes=(2,), precision_images={"float16": 1, "bfloat16": 1},
    reference_masks=2, option_images=1,
    # Compiling takes minutes on a CPU: the smoke run times channels_last only.
    # Not a budget to keep (CI machines are slow and shared): only a guard against a hung section.
    options=(("channels_last", {"channels_last": True}),), ray_images=2, ray_images_per_shard=1, budget_seconds=900,
)
OPTION_NEEDS_SECONDS = 90  # one runtime option on an H100/H200: compiling the UNet's blocks, then 3 images
# Rough seconds each section needs on an H100/H200 at FULL; a section starts only if its time is left.
NEEDS_SECONDS = {"environment": 0, "production": 60, "flops": 15, "precision": 60, "reference": 40,
                 "ray": 90, "runtime_options": 120}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny model on the CPU, seconds per section: CI's check that this script runs.")
    parser.add_argument("--json", type=Path, default=None, help="Write the report here.")
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
              "dtype": settings.dtype, "cpu_threads": torch.get_num_threads()}
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
                  best_batch_seconds_per_image=batches[best])
    # Kept for the sections after: the base labels and the stage times.
    state.update(base_labels=labels, images=images[: settings.timed_images], stage_seconds=per_stage,
                 seconds_per_image=report["seconds_per_image"])
    state["flops_segmenter"] = segmenter
    return report


def flops(settings: Settings, state: dict) -> dict:
    """FLOPs per stage of one image (counted on the device, same segmenter), and what they mean per second."""
    segmenter = state.pop("flops_segmenter")
    meter = StageMeter(count_flops=True)  # benchmarks/segment_bench.py: the same stages, counted
    instrument_production(segmenter, meter)
    meter.count_calls(segmenter.denoiser.unet, segmenter.vae.decoder)
    segmenter.segment_batch(state["images"][:1])
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
    return report


def precision(settings: Settings, state: dict) -> dict:
    base = state["base_labels"]
    report = {"base_dtype": settings.dtype}
    for dtype, count in settings.precision_images.items():
        segmenter = build_segmenter(settings, dtype)
        images = state["images"][:count]
        timed_segment(segmenter, images[:1])  # warm
        results, seconds = [], []
        for image in images:
            second, _, result = timed_segment(segmenter, [image])
            results.append(result[0].labels)
            seconds.append(second)
        report[dtype] = {"images": len(images), "identical_label_pixels": agreement(results, base[: len(images)]),
                         "seconds_per_image": statistics.median(seconds)}
        del segmenter
        release(torch.device(settings.device))
    return report


def reference(settings: Settings, state: dict) -> dict:
    """Production (base dtype) and the fp32 reference upsample the same low-res masks of one image at small K."""
    from emerdiff.reference import ReferenceEmerDiff

    config = settings.config.replace(num_masks=settings.reference_masks)
    image = state["images"][0]
    segmenter = build_segmenter(settings, settings.dtype, num_masks=settings.reference_masks)
    lowres = segmenter.segment(image).lowres_labels
    started = time.perf_counter()
    production_labels = segmenter.upsample(image, lowres).labels
    synchronize(segmenter.device)
    production_seconds = time.perf_counter() - started
    del segmenter
    release(torch.device(settings.device))
    with torch.device(settings.device):  # the same fp32 weights the production model was cast from
        slow = ReferenceEmerDiff(random_parts(settings.shape, seed=0), config, settings.device)
    started = time.perf_counter()
    reference_labels = slow.upsample(image, lowres)
    synchronize(torch.device(settings.device))
    reference_seconds = time.perf_counter() - started
    del slow
    release(torch.device(settings.device))
    return {"num_masks": settings.reference_masks, "production_dtype": settings.dtype, "reference_dtype": "float32",
            "identical_label_pixels": agreement([production_labels], [reference_labels]),
            "production_upsample_seconds": production_seconds, "reference_upsample_seconds": reference_seconds}


def runtime_options(settings: Settings, state: dict) -> dict:
    report = {"off": {"seconds_per_image": state["seconds_per_image"]}}
    for name, changes in settings.options:
        left = state["deadline"] - time.perf_counter()
        if left < OPTION_NEEDS_SECONDS:
            report[name] = {"skipped": f"time budget: {left:.0f} s left, an option needs about {OPTION_NEEDS_SECONDS} s"}
            continue
        try:
            segmenter = build_segmenter(settings, settings.dtype, **changes)
            images = state["images"][: settings.option_images]
            first, _, _ = timed_segment(segmenter, images[:1])  # compiles, when compiling
            runs = [timed_segment(segmenter, [image]) for image in images]
            report[name] = {
                "first_image_seconds": first,
                "seconds_per_image": statistics.median(seconds for seconds, _, _ in runs),
                "identical_label_pixels": agreement([r[0].labels for _, _, r in runs], state["base_labels"][: len(runs)]),
            }
            report[name]["speedup"] = state["seconds_per_image"] / report[name]["seconds_per_image"]
            del segmenter
        except Exception as error:  # one option failing (e.g. no compiler) must not hide the others
            report[name] = failure(error)
        release(torch.device(settings.device))
    return report


def ray_job(settings: Settings, state: dict) -> dict:
    """One actor labels generated shards on local disk; the bare segment_batch loop labels the same images."""
    from benchmarks.pipeline_bench import bare_loop, identical_label_pixels, input_shards, job_report, job_rows, run_ray_job
    from pipeline.config import LabelJobConfig

    device = torch.device(settings.device)
    batch = state.get("best_batch", 2)
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
        timed_segment(segmenter, photos(1))  # warm, as the actor's first shard is not
        bare = bare_loop(segmenter, shards, batch)
        del segmenter
        release(device)  # the actor is another process: it plans with what this one leaves free
        timing = run_ray_job(job, threads=1)
        job_summary = job_report(timing, job.output, settings.ray_images)
        same = identical_label_pixels(job_rows(job.output), bare["results"])
    return {
        "images": settings.ray_images, "shards": len(urls), "batch_size": batch,
        "bare_images_per_second": bare["images_per_second"],
        "job_steady_state_images_per_second": job_summary["steady_state_images_per_second"],
        "job_end_to_end_images_per_second": job_summary["end_to_end_images_per_second"],
        "efficiency": job_summary["steady_state_images_per_second"] / bare["images_per_second"],
        "segment_share_of_steady_state": job_summary["segment_share_of_steady_state"],
        "phases_seconds": job_summary["phases_seconds"],
        "identical_label_pixels": same,
    }


SECTIONS = {
    "environment": environment,
    "production": production,
    "flops": flops,
    "precision": precision,
    "reference": reference,
    "ray": ray_job,
    "runtime_options": runtime_options,  # last: compiling is the slowest and least certain
}


def failure(error: BaseException) -> dict:
    return {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(limit=-3)}


def run(settings: Settings) -> dict:
    started = time.perf_counter()
    report = {"settings": {"smoke": settings is SMOKE, "budget_seconds": settings.budget_seconds}}
    state = {"deadline": started + settings.budget_seconds}
    for name, section in SECTIONS.items():
        elapsed = time.perf_counter() - started
        needed = 0 if settings is SMOKE else NEEDS_SECONDS[name]
        if elapsed + needed > settings.budget_seconds:
            report[name] = {"skipped": f"time budget: {elapsed:.0f} s spent of {settings.budget_seconds:.0f}, needs about {needed} s"}
            continue
        section_started = time.perf_counter()
        try:
            report[name] = section(settings, state)
        except Exception as error:  # a section that fails must not stop the others; its error is the result
            logger.exception("section %s failed", name)
            report[name] = failure(error)
        report[name]["section_seconds"] = time.perf_counter() - section_started
        if name == "production" and "best_batch" in report[name]:
            state["best_batch"] = report[name]["best_batch"]
    report["total_seconds"] = time.perf_counter() - started
    return report


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
    fl = report.get("flops", {})
    if "achieved_tflops" in fl:
        peak = fl.get("peak_tflops_fp16_dense")
        yield "achieved TFLOP/s", f"{fl['achieved_tflops']:.2f}" + (f" of {peak:.0f} ({fl['share_of_peak']:.1%})" if peak else "")
        for stage, value in fl["achieved_tflops_per_stage"].items():
            yield f"  {stage}", f"{value:.2f}"
    for dtype, values in report.get("precision", {}).items():
        if isinstance(values, dict):
            yield f"identical pixels {dtype} vs {report['precision']['base_dtype']}", f"{values['identical_label_pixels']:.4f}"
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
    yield "total seconds", f"{report['total_seconds']:.0f}"


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
    report = run(settings)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
