"""Cost of EmerDiff per image: the production path against the slow reference, in one invocation.

    OMP_NUM_THREADS=1 taskset -c 0 python -m benchmarks.segment_bench --shape mid --resolution 256 --num-masks 4 --json bench.json

On a random model of SD's layout (``--shape tiny|mid|sd15``, benchmarks/models.py) it reports:

- seconds per image of the whole method (``segment``) on both paths: best and median of ``--runs``
  after ``--warmup``, wall clock and the process's CPU time, split by stage (features, k-means,
  inversion, modulated runs, decodes, other), and the production/reference ratios, best against best;
- the share of identical label pixels when both paths upsample the same low-res masks;
- FLOPs, UNet passes and VAE decodes per image per stage, counted on torch's meta device (shapes
  only, no weights, no compute) by running the same methods as the timed runs, with
  ``torch.utils.flop_counter.FlopCounterMode`` and forward hooks on the UNet and the VAE decoder.
  ``--flops-shape sd15 --flops-resolution 512 --flops-num-masks 25 --flops-feature-samples 100``
  adds the same count at SD 1.x's full size.

- the CLIP stage that ``label --clip-model`` adds (docs/method.md, "Names for segments"): its
  seconds per image on the timed images with a random CLIP of ``--clip-shape`` (vitb16: ViT-B/16
  at ``--clip-resolution`` 448), and its FLOPs on the meta device with their share of the image's
  total (the full-size count's when ``--flops-shape`` is given).

``--smoke`` is a seconds-long run on the tiny model, for CI.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
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

from benchmarks.models import random_parts
from benchmarks.report import benchmark_main
from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff.config import Compile, Replay
from emerdiff.reference import ReferenceEmerDiff

logger = logging.getLogger("benchmarks.segment_bench")

STAGES = ("features", "k-means", "inversion", "modulated runs", "decodes")
# The methods each path runs a stage in (what the timers and counters wrap).
PRODUCTION_STAGES = {
    "features": ("segmenter", "_features"),
    "k-means": ("segmenter", "_lowres_labels"),
    "inversion": ("denoiser", "invert"),  # its 15 UNet passes are the reference run (spec step 7)
    "modulated runs": ("denoiser", "modulated_runs"),
    "decodes": ("segmenter", "_decode"),
}
REFERENCE_STAGES = {
    "features": "_features",
    "k-means": "_lowres_masks",  # calls _features, whose time is its own stage
    "inversion": "_invert",
    "modulated runs": "trajectory",
    "decodes": "decode",
}


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA attention kernels but not the CPU one; count it with the same formula.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", choices=["tiny", "mid", "sd15"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--num-masks", type=int, default=4)
    parser.add_argument("--feature-samples", type=int, default=None, help="N (default: EmerDiffConfig's).")
    parser.add_argument("--kmeans-restarts", type=int, default=None, help="Default: EmerDiffConfig's.")
    parser.add_argument("--modulation-timestep", type=int, default=None,
                        help="t_m (default: EmerDiffConfig's 281, a 15-step window); a smaller one shortens every trajectory.")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--images", type=int, default=1, help="Photos per run (scikit-image's samples).")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="Production dtype (default: the segmenter's default for the device). The reference is always fp32.")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--attention-replay", default="auto", choices=list(typing.get_args(Replay)))
    parser.add_argument("--channels-last", action="store_true", help="Production UNet and VAE in channels-last memory format.")
    parser.add_argument("--torch-compile", default="none", choices=list(typing.get_args(Compile)),
                        help="torch.compile the production UNet's transformer blocks and/or VAE decoder (the reference stays eager).")
    parser.add_argument("--no-reference", action="store_true", help="Skip the slow reference (time and agreement).")
    parser.add_argument("--flops-shape", default=None, choices=["tiny", "mid", "sd15"])
    parser.add_argument("--flops-resolution", type=int, default=512)
    parser.add_argument("--flops-num-masks", type=int, default=25)
    parser.add_argument("--flops-feature-samples", type=int, default=100)
    parser.add_argument("--clip-shape", default=None, choices=["none", "tiny", "vitb16"],
                        help="Random CLIP for the CLIP stage (none skips it). Default: vitb16 (tiny with --smoke).")
    parser.add_argument("--clip-resolution", type=int, default=None, help="Default: 448 (64 with --smoke).")
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny model, 128 px, K=2, N=2, 4 k-means restarts, t_m=61, one run: seconds, for CI.")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"--runs must be at least 1 and --warmup at least 0, got {args.runs} and {args.warmup}")
    if args.smoke:
        args.shape, args.resolution, args.num_masks, args.runs, args.warmup = "tiny", 128, 2, 1, 0
        args.feature_samples, args.kmeans_restarts, args.modulation_timestep = 2, 4, 61  # a 4-step window
    smoke_clip = ("tiny", 64) if args.smoke else ("vitb16", 448)
    args.clip_shape = args.clip_shape or smoke_clip[0]
    args.clip_resolution = args.clip_resolution or smoke_clip[1]
    return args


def build_config(args: argparse.Namespace, **changes) -> EmerDiffConfig:
    values = {"num_masks": args.num_masks, "resolution": args.resolution, "chunk_size": args.chunk_size,
              "attention_replay": args.attention_replay, "channels_last": args.channels_last,
              "torch_compile": args.torch_compile}
    if args.feature_samples is not None:
        values["feature_samples"] = args.feature_samples
    if args.kmeans_restarts is not None:
        values["kmeans_restarts"] = args.kmeans_restarts
    if args.modulation_timestep is not None:
        values["modulation_timestep"] = args.modulation_timestep
    return EmerDiffConfig(**{**values, **changes})


def sample_images(count: int) -> list[np.ndarray]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return [photos[i % len(photos)] for i in range(count)]


# -- instrumentation -----------------------------------------------------------------------------


class StageMeter:
    """Seconds (wall and CPU), and optionally FLOPs, per stage; UNet passes and VAE decodes per stage.

    Each stage is a wrapped method. Time and FLOPs are exclusive: a stage called inside another
    (the reference's features inside its k-means) counts only in its own.
    """

    def __init__(self, count_flops: bool = False):
        self.count_flops = count_flops
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, int] = defaultdict(int)
        self.unet_passes: dict[str, int] = defaultdict(int)
        self.vae_decodes: dict[str, int] = defaultdict(int)
        self._active: list[str] = []

    def wrap(self, owner, method: str, stage: str) -> None:
        original = getattr(owner, method)

        def measured(*args, **kwargs):
            with self.stage(stage):
                return original(*args, **kwargs)

        setattr(owner, method, measured)

    @contextlib.contextmanager
    def stage(self, stage: str):
        parent = self._active[-1] if self._active else None
        self._active.append(stage)
        counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) if self.count_flops else contextlib.nullcontext()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            with counter:
                yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            self._active.pop()
            flops = counter.get_total_flops() if self.count_flops else 0
            self.seconds[stage] += wall
            self.cpu_seconds[stage] += cpu
            self.flops[stage] += flops
            if parent is not None:
                self.seconds[parent] -= wall
                self.cpu_seconds[parent] -= cpu
                self.flops[parent] -= flops

    def count_calls(self, unet: torch.nn.Module, vae_decoder: torch.nn.Module) -> list:
        """Hooks counting batch elements: one UNet pass per noise prediction, one decode per image.

        The shared prefix (emerdiff/denoising.py) turns a batch-1 input into one prediction per
        run, hence the output hook; a feature pass stops at the feature layer and has no output,
        hence the input hook.
        """
        return [
            unet.register_forward_pre_hook(lambda module, args: self._add(self.unet_passes, args[0].shape[0])),
            unet.register_forward_hook(
                lambda module, args, output: self._add(self.unet_passes, output[0].shape[0] - args[0].shape[0])),
            vae_decoder.register_forward_pre_hook(lambda module, args: self._add(self.vae_decodes, args[0].shape[0])),
        ]

    def _add(self, counts: dict[str, int], count: int) -> None:
        counts[self._active[-1] if self._active else "other"] += count

    def per_image(self, images: int) -> dict:
        def divided(values: dict) -> dict:
            return {stage: values[stage] / images for stage in (*STAGES, "other") if stage in values}

        result = {"unet_passes": divided(self.unet_passes), "vae_decodes": divided(self.vae_decodes)}
        result["unet_passes_total"] = sum(result["unet_passes"].values())
        result["vae_decodes_total"] = sum(result["vae_decodes"].values())
        if self.count_flops:
            result["flops"] = divided(self.flops)
            result["flops_total"] = sum(result["flops"].values())
        return result


def instrument_production(segmenter: EmerDiffSegmenter, meter: StageMeter) -> None:
    owners = {"segmenter": segmenter, "denoiser": segmenter.denoiser}
    for stage, (owner, method) in PRODUCTION_STAGES.items():
        meter.wrap(owners[owner], method, stage)


def instrument_reference(reference: ReferenceEmerDiff, meter: StageMeter) -> None:
    for stage, method in REFERENCE_STAGES.items():
        meter.wrap(reference, method, stage)


# -- timed runs ----------------------------------------------------------------------------------


def timed(segment, images, runs: int, warmup: int, meter: StageMeter, device: torch.device) -> tuple[dict, typing.Any]:
    """Per-image seconds of ``runs`` calls after ``warmup``, and the last call's result.

    ``meter`` keeps the stages of the timed calls only.
    """
    for _ in range(warmup):
        segment(images)
    meter.seconds.clear()
    meter.cpu_seconds.clear()
    wall, cpu = [], []
    for _ in range(runs):
        synchronize(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        result = segment(images)
        synchronize(device)
        wall.append((time.perf_counter() - start_wall) / len(images))
        cpu.append((time.process_time() - start_cpu) / len(images))
    calls = runs * len(images)
    stage_seconds = {stage: meter.seconds.get(stage, 0.0) / calls for stage in STAGES}
    stage_seconds["other"] = statistics.mean(wall) - sum(stage_seconds.values())
    stage_cpu = {stage: meter.cpu_seconds.get(stage, 0.0) / calls for stage in STAGES}
    stage_cpu["other"] = statistics.mean(cpu) - sum(stage_cpu.values())
    return {
        "seconds_per_image": statistics.median(wall), "best_seconds_per_image": min(wall),
        "images_per_second": 1 / statistics.median(wall), "runs_seconds_per_image": wall,
        "cpu_seconds_per_image": statistics.median(cpu), "best_cpu_seconds_per_image": min(cpu),
        "runs_cpu_seconds_per_image": cpu,
        "stage_seconds_per_image": stage_seconds, "stage_cpu_seconds_per_image": stage_cpu,
    }, result


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def measure_production(segmenter: EmerDiffSegmenter, images, args) -> tuple[dict, list]:
    meter = StageMeter()
    instrument_production(segmenter, meter)
    # The first call pays for any compilation (--torch-compile): reported apart, it counts as a warm-up run.
    start = time.perf_counter()
    segmenter.segment_batch(images)
    first_call = (time.perf_counter() - start) / len(images)
    result, results = timed(segmenter.segment_batch, images, args.runs, max(0, args.warmup - 1), meter, segmenter.device)
    return {**result, "first_call_seconds_per_image": first_call, "host_peak_mib": host_peak_mib(),
            "device_peak_mib": device_peak_mib(segmenter.device)}, results


def measure_reference(reference: ReferenceEmerDiff, images, production_results, args) -> tuple[dict, float]:
    """Times the reference's whole method; returns its report and the share of identical label pixels.

    The agreement compares labels made from the same low-res masks: the reference's own when its
    k-means found production's, else it upsamples production's masks in one more (untimed) call.
    """
    meter = StageMeter()
    instrument_reference(reference, meter)
    lowres = []  # the low-res masks of the latest call
    original_masks = reference._lowres_masks

    def kept_masks(latent):
        lowres.append(original_masks(latent))
        return lowres[-1]

    reference._lowres_masks = kept_masks

    def segment_all(batch):
        lowres.clear()
        return [reference.segment(image) for image in batch]

    result, labels = timed(segment_all, images, args.runs, args.warmup, meter, reference.device)
    agreement = []
    for image, mine, ref_lowres, production in zip(images, labels, lowres, production_results):
        if not np.array_equal(ref_lowres, production.lowres_labels):
            mine = reference.upsample(image, production.lowres_labels)
        agreement.append(float(np.mean(mine == production.labels)))
    same_masks = all(np.array_equal(a, p.lowres_labels) for a, p in zip(lowres, production_results))
    return {**result, "same_lowres_masks": same_masks, "host_peak_mib": host_peak_mib(),
            "device_peak_mib": device_peak_mib(reference.device)}, float(np.mean(agreement))


# -- counts on the meta device -------------------------------------------------------------------


def count_production(parts, config: EmerDiffConfig) -> dict:
    """FLOPs, UNet passes and decodes per image per stage of the production path, on the meta device.

    Runs what ``segment`` runs for one image whose K masks are all non-empty, minus k-means (its
    iterations depend on the data, and the meta device has none): ``_features``, then the stages
    of ``_difference_maps``: the drawn samples, ``invert``, ``modulated_runs`` chunk by chunk and
    ``_decode``.
    """
    segmenter = EmerDiffSegmenter(copy.deepcopy(parts), config, torch.device("meta"), torch.float32)
    meter = StageMeter(count_flops=True)
    instrument_production(segmenter, meter)
    meter.count_calls(segmenter.denoiser.unet, segmenter.vae.decoder)
    side = config.resolution // 8
    latent = torch.zeros(1, 4, side, side, device="meta")
    denoiser = segmenter.denoiser
    with torch.no_grad():  # not inference_mode, under which the FLOP counter decomposes every op, slowly
        segmenter._features(latent)
        runs = 2 * config.num_masks
        chunk = min(runs, segmenter.chunks.unet)
        samples = denoiser.inversion.samples(latent, torch.Generator("cpu").manual_seed(config.seed))
        noise_maps = denoiser.invert(latent, samples, chunk)
        modulations = torch.zeros(runs, segmenter._modulation_side**2, device="meta")
        for first in range(0, runs, chunk):
            segmenter._decode(denoiser.modulated_runs(samples[:1], noise_maps, modulations[first : first + chunk]),
                              segmenter.chunks.decode)
    return {"attention_replay": config.attention_replay, "chunk_size": chunk,
            "probability_layers": len(denoiser.state.probability_layers), **meter.per_image(1)}


def count_reference(parts, config: EmerDiffConfig) -> dict:
    """The same counts for the slow reference, on the meta device.

    Its passes are all alike, so one feature pass stands for the N, and one trajectory and one
    decode for the 2K (mask, sign) pairs: their counts are multiplied, not run (on the meta device
    a UNet pass at SD's size still costs about half a second of Python).
    """
    reference = ReferenceEmerDiff.from_parts(parts, config.replace(feature_samples=1), device="meta")
    meter = StageMeter(count_flops=True)
    instrument_reference(reference, meter)
    meter.count_calls(reference.unet, reference.vae.decoder)
    side = config.resolution // 8
    latent = torch.zeros(1, 4, side, side, device="meta")
    with torch.no_grad():
        reference._features(latent)
        inversion = reference._invert(latent)
        query, _ = inversion.recorded[(config.modulation_layer, config.modulation_timestep)]
        tokens = query.shape[1]
        reference.decode(reference.trajectory(inversion, modulation=torch.zeros(tokens, device="meta"))[-1])
    scale = {"features": config.feature_samples, "modulated runs": 2 * config.num_masks, "decodes": 2 * config.num_masks}
    for stage, factor in scale.items():
        for counts in (meter.flops, meter.unet_passes, meter.vae_decodes):
            if stage in counts:
                counts[stage] *= factor
    return meter.per_image(1)


def meta_counts(shape: str, config: EmerDiffConfig, replays: tuple[str, ...]) -> dict:
    with torch.device("meta"):
        parts = random_parts(shape)
    result = {"shape": shape, "resolution": config.resolution, "num_masks": config.num_masks,
              "feature_samples": config.feature_samples,
              "production": [count_production(parts, config.replace(attention_replay=replay)) for replay in replays],
              "reference": count_reference(parts, config)}
    reference_total = result["reference"]["flops_total"]
    for production in result["production"]:
        production["flops_ratio_to_reference"] = production["flops_total"] / reference_total
    return result


# -- the CLIP stage ------------------------------------------------------------------------------


def measure_clip(images, results, args, device: torch.device, dtype: torch.dtype) -> dict:
    """Seconds per image of the CLIP stage (dense embedding and pooling) on the timed images, and its
    FLOPs per image on the meta device."""
    from benchmarks.models import random_clip
    from emerdiff.clip import SegmentCLIP

    clip = SegmentCLIP(random_clip(args.clip_shape), args.clip_resolution, device, dtype)
    label_maps = [result.labels for result in results]

    def embed(batch):
        return clip.segment_embeddings_batch(batch, label_maps, args.num_masks)

    meter = StageMeter()
    timing, _ = timed(embed, images, args.runs, args.warmup, meter, device)
    return {"shape": args.clip_shape, "resolution": args.clip_resolution, "grid": clip.grid,
            "seconds_per_image": timing["seconds_per_image"], "best_seconds_per_image": timing["best_seconds_per_image"],
            "best_cpu_seconds_per_image": timing["best_cpu_seconds_per_image"],
            "flops": clip_flops(args.clip_shape, args.clip_resolution)}


def clip_flops(shape: str, resolution: int) -> int:
    """FLOPs of one image's dense CLIP embedding, counted on the meta device (pooling is a small matmul on the host)."""
    from PIL import Image

    from benchmarks.models import random_clip
    from emerdiff.clip import SegmentCLIP

    with torch.device("meta"):
        parts = random_clip(shape)
    clip = SegmentCLIP(parts, resolution, torch.device("meta"), torch.float32)
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    with counter:
        clip.dense_embeddings([Image.new("RGB", (resolution, resolution))])
    return counter.get_total_flops()


# -- report --------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    from emerdiff.loading import resolve_dtype

    config = build_config(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(args.dtype, device)
    parts = random_parts(args.shape)
    # The reference copies the weights before the segmenter installs its processors and hooks.
    reference = None if args.no_reference else ReferenceEmerDiff.from_parts(parts, config, device)
    segmenter = EmerDiffSegmenter(parts, config, device, dtype)
    images = sample_images(args.images)
    report = {
        "shape": args.shape, "resolution": args.resolution, "num_masks": args.num_masks,
        "feature_samples": config.feature_samples, "kmeans_restarts": config.kmeans_restarts, "images": len(images),
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "attention_replay": args.attention_replay,
        "channels_last": args.channels_last, "torch_compile": args.torch_compile,
        "probability_layers": len(segmenter.denoiser.state.probability_layers),
    }
    report["production"], results = measure_production(segmenter, images, args)
    if reference is not None:
        report["reference"], agreement = measure_reference(reference, images, results, args)
        report["label_agreement"] = {report["dtype"]: agreement}
        production, slow = report["production"], report["reference"]
        report["ratios"] = {
            "seconds_best": production["best_seconds_per_image"] / slow["best_seconds_per_image"],
            "seconds_median": production["seconds_per_image"] / slow["seconds_per_image"],
            "cpu_seconds_best": production["best_cpu_seconds_per_image"] / slow["best_cpu_seconds_per_image"],
        }
    # Counts at the timed size, with the replay the timed production run used.
    # On the meta device "auto" has no memory to budget and keeps only the coarse layers' probabilities.
    replays_all = report["probability_layers"] == len(_self_attention_layers(segmenter))
    replay = "probabilities" if replays_all else args.attention_replay
    counted = config.replace(channels_last=False, torch_compile="none")  # neither changes the work
    report["counts"] = meta_counts(args.shape, counted, (replay,))
    if args.flops_shape:
        # The method's defaults otherwise (t_m, steps, layers), whatever this run's own settings.
        full = EmerDiffConfig(resolution=args.flops_resolution, num_masks=args.flops_num_masks,
                              feature_samples=args.flops_feature_samples)
        # No memory to budget on the meta device: both ends of attention_replay.
        report["full_size_counts"] = meta_counts(args.flops_shape, full, ("probabilities", "query_key"))
    if args.clip_shape != "none":
        report["clip"] = measure_clip(images, results, args, device, dtype)
        method = report.get("full_size_counts", report["counts"])["production"][0]["flops_total"]
        report["clip"]["share_of_image_flops"] = report["clip"]["flops"] / (method + report["clip"]["flops"])
    return report


def _self_attention_layers(segmenter: EmerDiffSegmenter) -> list[str]:
    from emerdiff.attention import attention_layer_names

    return [name for name in attention_layer_names(segmenter.denoiser.unet) if name.endswith("attn1")]


def print_table(report: dict) -> None:
    print(f"\nEmerDiff benchmark: shape={report['shape']} {report['resolution']}px K={report['num_masks']} "
          f"N={report['feature_samples']} restarts={report['kmeans_restarts']} on {report['device']} "
          f"({report['dtype']}, {report['threads']} threads, attention_replay={report['attention_replay']} "
          f"[{report['probability_layers']} layers replay probabilities], channels_last={report['channels_last']}, "
          f"torch_compile={report['torch_compile']})")
    print(f"{'path':<11}{'best s':>9}{'median s':>10}{'best CPU s':>12}" + "".join(f"{s:>16}" for s in (*STAGES, "other")))
    for path in ("production", "reference"):
        if path in report:
            r = report[path]
            stages = "".join(f"{r['stage_seconds_per_image'][s]:>16.2f}" for s in (*STAGES, "other"))
            print(f"{path:<11}{r['best_seconds_per_image']:>9.2f}{r['seconds_per_image']:>10.2f}"
                  f"{r['best_cpu_seconds_per_image']:>12.2f}{stages}")
    if "ratios" in report:
        ratios = report["ratios"]
        print(f"production/reference: time (best) {ratios['seconds_best']:.3f}, time (median) {ratios['seconds_median']:.3f}, "
              f"CPU time (best) {ratios['cpu_seconds_best']:.3f}; identical label pixels {report['label_agreement']}")
    for key in ("counts", "full_size_counts"):
        if key in report:
            print_counts(report[key])
    if "clip" in report:
        clip = report["clip"]
        print(f"\nCLIP stage ({clip['shape']} at {clip['resolution']} px, a {clip['grid']}x{clip['grid']} grid): "
              f"best {clip['best_seconds_per_image']:.3f} s/img, {clip['flops'] / 1e12:.4f} TFLOP/img "
              f"({clip['share_of_image_flops']:.2e} of the image's total)")


def print_counts(counts: dict) -> None:
    print(f"\nPer image at {counts['shape']} {counts['resolution']}px K={counts['num_masks']} N={counts['feature_samples']} "
          "(meta device; k-means not counted):")
    columns = [(f"production, {p['attention_replay']}", p) for p in counts["production"]] + [("reference", counts["reference"])]
    print(f"{'stage':<16}" + "".join(f"{name:>40}" for name, _ in columns))
    print(f"{'':<16}" + "".join(f"{'TFLOP':>16}{'UNet passes':>14}{'decodes':>10}" for _ in columns))
    for stage in ("features", "inversion", "modulated runs", "decodes"):
        print(f"{stage:<16}" + "".join(
            f"{c['flops'].get(stage, 0) / 1e12:>16.3f}{c['unet_passes'].get(stage, 0):>14.0f}{c['vae_decodes'].get(stage, 0):>10.0f}"
            for _, c in columns))
    print(f"{'total':<16}" + "".join(
        f"{c['flops_total'] / 1e12:>16.3f}{c['unet_passes_total']:>14.0f}{c['vae_decodes_total']:>10.0f}" for _, c in columns))
    for name, production in columns[:-1]:
        print(f"  {name}: FLOPs ratio to the reference {production['flops_ratio_to_reference']:.3f} (chunks of {production['chunk_size']})")


def main(argv=None) -> int:
    return benchmark_main(argv, parse_args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
