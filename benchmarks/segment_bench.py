"""Cost of EmerDiff per image: the production path against the slow reference, in one invocation.

    python -m benchmarks.segment_bench --shape mid --resolution 256 --num-masks 4 --json bench.json

Reports, for a random model of SD's layout (``--shape tiny|mid|sd15``): seconds/image (median of
``--runs`` after ``--warmup``), images/s, peak host and device memory, UNet evaluations and VAE
decodes per image, FLOPs per image per stage (``torch.utils.flop_counter``), the optimized/reference
ratios, and the fraction of identical label pixels. ``--flops-shape sd15 --flops-resolution 512
--flops-num-masks 30`` adds a FLOP count at full size on torch's meta device (no weights, no
compute), which is machine independent. ``--smoke`` is a seconds-long run for CI.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import time
import typing
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff.config import Compile
from emerdiff.reference import ReferenceEmerDiff
from benchmarks.models import random_parts

logger = logging.getLogger("benchmarks.segment_bench")

def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one; count it with the same formula.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)


PRODUCTION_STAGES = {"features": "query_features", "reference run": "reference_run", "modulated runs": "modulated_runs"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--num-masks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--images", type=int, default=1, help="Photos per run (scikit-image's samples).")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="Production dtype (default: the segmenter's default for the device). The reference is always fp32.")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--attention-replay", default="auto", choices=["auto", "query_key", "probabilities"])
    parser.add_argument("--channels-last", action="store_true", help="Production UNet and VAE in channels-last memory format.")
    parser.add_argument("--torch-compile", default="none", choices=list(typing.get_args(Compile)),
                        help="torch.compile the production UNet's transformer blocks and/or VAE decoder (the reference stays eager).")
    parser.add_argument("--no-reference", action="store_true", help="Skip the slow reference (time and agreement).")
    parser.add_argument("--flops-shape", default=None, choices=["tiny", "mid", "sd15"])
    parser.add_argument("--flops-resolution", type=int, default=512)
    parser.add_argument("--flops-num-masks", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, 128 px, K=2, one run: seconds, for CI.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.resolution, args.num_masks, args.runs, args.warmup = "tiny", 128, 2, 1, 0
    return args


def sample_images(count: int) -> list[np.ndarray]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [photos[i % len(photos)] for i in range(count)]


# -- instrumentation -----------------------------------------------------------------------------


class StageCounter:
    """FLOPs per stage, and UNet/VAE batch elements, gathered by wrapping the stage methods."""

    def __init__(self):
        self.flops: dict[str, int] = defaultdict(int)
        self.unet_evaluations = 0
        self.vae_decodes = 0

    def wrap(self, owner, method: str, stage: str) -> None:
        original = getattr(owner, method)

        def counted(*args, **kwargs):
            with flop_counter() as counter:
                result = original(*args, **kwargs)
            self.flops[stage] += counter.get_total_flops()
            return result

        setattr(owner, method, counted)

    def count_calls(self, unet, vae_decoder) -> None:
        # One evaluation per noise prediction. The shared prefix (emerdiff/denoising.py) turns a batch-1
        # input into one prediction per run, hence the output hook; the features pass stops before its
        # output, hence the input hook.
        unet.register_forward_pre_hook(lambda module, args: self._add("unet_evaluations", args[0].shape[0]))
        unet.register_forward_hook(
            lambda module, args, output: self._add("unet_evaluations", output[0].shape[0] - args[0].shape[0]))
        vae_decoder.register_forward_pre_hook(lambda module, args: self._add("vae_decodes", args[0].shape[0]))

    def _add(self, name: str, count: int) -> None:
        setattr(self, name, getattr(self, name) + count)


def instrument_production(segmenter: EmerDiffSegmenter) -> StageCounter:
    counter = StageCounter()
    for stage, method in PRODUCTION_STAGES.items():
        counter.wrap(segmenter.denoiser, method, stage)
    counter.wrap(segmenter, "_decode", "decodes")
    return counter


def instrument_reference(reference: ReferenceEmerDiff) -> StageCounter:
    counter = StageCounter()
    counter.wrap(reference, "_features", "features")
    original_run = reference._run

    def run(latents, timesteps, mode, modulation):
        stage = "reference run" if mode == "record" else "modulated runs"
        with flop_counter() as flops:
            result = original_run(latents, timesteps, mode, modulation)
        counter.flops[stage] += flops.get_total_flops()
        return result

    reference._run = run
    counter.wrap(reference, "_decode", "decodes")
    return counter


# -- measurements --------------------------------------------------------------------------------


def timed(segment, images, runs: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        segment(images)
    seconds = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        segment(images)
        synchronize(device)
        seconds.append((time.perf_counter() - start) / len(images))
    return seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def per_image(counter: StageCounter, images: int) -> dict:
    flops = {stage: value / images for stage, value in counter.flops.items()}
    return {
        "unet_evaluations": counter.unet_evaluations / images,
        "vae_decodes": counter.vae_decodes / images,
        "flops_per_stage": flops,
        "flops": sum(flops.values()),
    }


def measure_production(segmenter, images, args) -> tuple[dict, list]:
    # The first call pays for any compilation (--torch-compile): reported apart, it counts as a warm-up run.
    first_call = timed(segmenter.segment_batch, images, 1, 0, segmenter.device)[0]
    seconds = timed(segmenter.segment_batch, images, args.runs, max(0, args.warmup - 1), segmenter.device)
    results = segmenter.segment_batch(images)
    counter = instrument_production(segmenter)
    counter.count_calls(segmenter.denoiser.unet, segmenter.vae.decoder)
    with torch.compiler.set_stance("force_eager"):  # the counting hooks would force recompiles; FLOPs are the same
        segmenter.segment_batch(images)
    return {**summary(seconds), "first_call_seconds_per_image": first_call, **per_image(counter, len(images)),
            "host_peak_mib": host_peak_mib(), "device_peak_mib": device_peak_mib(segmenter.device)}, results


def measure_reference(segmenter, images, lowres, args) -> tuple[dict, list]:
    reference = ReferenceEmerDiff.from_segmenter(segmenter)
    # The same plain model whatever the production's runtime options (run() also keeps it eager).
    reference.unet.to(memory_format=torch.contiguous_format)
    reference.vae.to(memory_format=torch.contiguous_format)

    def upsample_all(batch):
        return [reference.upsample(image, low) for image, low in zip(batch, lowres)]

    seconds = timed(upsample_all, images, args.runs, args.warmup, segmenter.device)
    labels = upsample_all(images)
    counter = instrument_reference(reference)
    counter.count_calls(reference.unet, reference.vae.decoder)
    for image in images:  # the full method, k-means included, for a like-for-like count
        reference.segment(image)
    return {**summary(seconds), **per_image(counter, len(images)), "host_peak_mib": host_peak_mib(),
            "device_peak_mib": device_peak_mib(segmenter.device)}, labels


def summary(seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"seconds_per_image": median, "best_seconds_per_image": min(seconds), "images_per_second": 1 / median,
            "runs_seconds_per_image": seconds}


def meta_flops(shape: str, resolution: int, num_masks: int, chunk: int, replay: str) -> dict:
    """FLOPs per image per stage at any size, on the meta device (shapes only, no compute)."""
    config = EmerDiffConfig(num_masks=num_masks, resolution=resolution, chunk_size=chunk, attention_replay=replay)
    with torch.device("meta"):
        parts = random_parts(shape)
    segmenter = EmerDiffSegmenter(parts, config, torch.device("meta"), torch.float32)
    production = instrument_production(segmenter)
    latent = torch.zeros(1, 4, resolution // 8, resolution // 8, device="meta")
    segmenter.denoiser.query_features(latent, latent)
    start = segmenter.denoiser.noised(latent, latent, config.modulation_timestep)
    # What _difference_maps runs for K non-empty masks: one reference run, 2K runs in chunks, 2K decodes.
    segmenter.denoiser.reference_run(start)
    tokens = segmenter._modulation_side**2
    for first in range(0, 2 * num_masks, chunk):
        runs = min(chunk, 2 * num_masks - first)
        segmenter._decode(segmenter.denoiser.modulated_runs(start, torch.zeros(runs, tokens, device="meta")))

    reference = ReferenceEmerDiff.from_segmenter(segmenter)
    counted = instrument_reference(reference)
    reference._features(latent, latent)
    timesteps = reference._timesteps()
    reference._run(start, timesteps, "record", None)
    # The reference does the same work for every (mask, sign): count one and scale by 2K.
    reference._decode(reference._run(start, timesteps, "replay", torch.zeros(tokens, device="meta")))
    for stage in ("modulated runs", "decodes"):
        counted.flops[stage] *= 2 * num_masks
    result = {"shape": shape, "resolution": resolution, "num_masks": num_masks, "attention_replay": replay,
              "production": per_image(production, 1)["flops_per_stage"], "reference": per_image(counted, 1)["flops_per_stage"]}
    result["ratio"] = sum(result["production"].values()) / sum(result["reference"].values())
    return result


# -- report --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    config = EmerDiffConfig(num_masks=args.num_masks, resolution=args.resolution, chunk_size=args.chunk_size,
                            attention_replay=args.attention_replay, channels_last=args.channels_last,
                            torch_compile=args.torch_compile)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from emerdiff.loading import resolve_dtype

    dtype = resolve_dtype(args.dtype, device)
    segmenter = EmerDiffSegmenter(random_parts(args.shape), config, device, dtype)
    images = sample_images(args.images)
    report = {
        "shape": args.shape, "resolution": args.resolution, "num_masks": args.num_masks, "images": len(images),
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "attention_replay": args.attention_replay,
        "channels_last": args.channels_last, "torch_compile": args.torch_compile,
        "probability_layers": len(segmenter.denoiser.state.probability_layers),
    }
    report["production"], results = measure_production(segmenter, images, args)
    if not args.no_reference:
        lowres = [r.lowres_labels for r in results]
        with torch.compiler.set_stance("force_eager"):  # its deep copy of the model keeps the compiled blocks
            report["reference"], reference_labels = measure_reference(segmenter, images, lowres, args)
        agreement = float(np.mean([np.mean(r.labels == ref) for r, ref in zip(results, reference_labels)]))
        report["label_agreement"] = {report["dtype"]: agreement}
        report["ratios"] = {
            "seconds_best": report["production"]["best_seconds_per_image"] / report["reference"]["best_seconds_per_image"],
            "seconds_median": report["production"]["seconds_per_image"] / report["reference"]["seconds_per_image"],
            "flops": report["production"]["flops"] / report["reference"]["flops"],
        }
    if args.flops_shape:
        # On the meta device there is no memory to budget: count both ends of attention_replay.
        report["full_size_flops"] = [
            meta_flops(args.flops_shape, args.flops_resolution, args.flops_num_masks, args.chunk_size or 8, replay)
            for replay in ("query_key", "probabilities")
        ]
    return report


def print_table(report: dict) -> None:
    print(f"\nEmerDiff benchmark: shape={report['shape']} {report['resolution']}px K={report['num_masks']} "
          f"on {report['device']} ({report['dtype']}, {report['threads']} threads, channels_last={report['channels_last']}, "
          f"torch_compile={report['torch_compile']})")
    header = f"{'path':<11}{'s/img':>9}{'best':>9}{'img/s':>9}{'UNet/img':>10}{'VAE/img':>9}{'GFLOP/img':>12}{'host MiB':>10}"
    print(header)
    for path in ("production", "reference"):
        if path in report:
            r = report[path]
            print(f"{path:<11}{r['seconds_per_image']:>9.3f}{r['best_seconds_per_image']:>9.3f}{r['images_per_second']:>9.3f}"
                  f"{r['unet_evaluations']:>10.0f}{r['vae_decodes']:>9.0f}{r['flops'] / 1e9:>12.2f}{r['host_peak_mib']:>10.0f}")
    if "ratios" in report:
        ratios = report["ratios"]
        print(f"production/reference: time (best) {ratios['seconds_best']:.3f}, time (median) {ratios['seconds_median']:.3f}, "
              f"FLOPs {ratios['flops']:.3f}; identical label pixels {report['label_agreement']}")
    for full in report.get("full_size_flops", []):
        print(f"\nFLOPs per image at {full['shape']} {full['resolution']}px K={full['num_masks']}, "
              f"attention_replay={full['attention_replay']} (TFLOP):")
        for stage in full["reference"]:
            print(f"  {stage:<16} production {full['production'].get(stage, 0) / 1e12:>9.2f}   reference {full['reference'][stage] / 1e12:>9.2f}")
        print(f"  total ratio production/reference: {full['ratio']:.3f}")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
