"""The memory planner (emerdiff/planning.py): shapes in, chunk sizes out, never a UNet pass.

On CUDA the segmenter used to measure memory by running the UNet, which overwrote the first
image's recorded attention. Here CUDA's memory calls are stubbed on a CPU: the plan comes from the
caching allocator's numbers, nothing is probed, and the first image's labels are those of a run
with a fixed chunk size. The estimate itself is checked against allocations counted on a CPU.
"""

import weakref

import numpy as np
import pytest
import torch
from map_agreement import assert_labels_agree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.models import random_parts
from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff import planning
from emerdiff.attention import attention_layer_names, attention_probabilities
from emerdiff.images import to_rgb

GiB = 2**30
aten = torch.ops.aten


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once, counting every storage an op creates while active.

    A storage counts from the op that returns it until Python frees it (views share it, so it is
    counted once). Kernels' private scratch buffers are not seen; the weights, made before, are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = id(storage)
        if key not in self.live:
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            weakref.finalize(storage, self._release, key)
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(output)[0]:
            if isinstance(tensor, torch.Tensor):
                self.count(tensor)
        return output


def _channels_last(tensor: torch.Tensor) -> bool:
    return tensor.dim() == 4 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


class CudaLayoutBytes(LiveTensorBytes):
    """LiveTensorBytes with the copies CUDA makes where a CPU makes none.

    CUDA's GroupNorm runs on a contiguous copy of a channels_last input and returns a contiguous
    output; a convolution with channels_last weights then copies that input back to channels_last.
    Both copies are made here, as CUDA makes them, so they are counted while the op runs.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in (aten.group_norm, aten.native_group_norm) and _channels_last(args[0]):
            copy = args[0].contiguous()
            self.count(copy)
            args = (copy, *args[1:])
        elif packet in (aten.conv2d, aten.convolution) and _channels_last(args[1]) and not _channels_last(args[0]):
            copy = args[0].contiguous(memory_format=torch.channels_last)
            self.count(copy)
            args = (copy, *args[1:])
        return super().__torch_dispatch__(func, types, args, kwargs)


class PlannedAsOnCuda(EmerDiffSegmenter):
    """Runs on the CPU but plans memory as it would on CUDA, from torch.cuda's (stubbed) numbers."""

    def _memory_device_type(self) -> str:
        return "cuda"


@pytest.fixture
def cuda_memory(monkeypatch):
    """Stub torch.cuda's memory queries; any call that would measure by running something fails the test."""
    numbers = {"free": 6 * GiB, "reserved": 3 * GiB, "allocated": 1 * GiB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (numbers["free"], 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: numbers["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: numbers["allocated"])

    def probe(*args, **kwargs):
        raise AssertionError("the planner measured instead of estimating")

    for name in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, probe)
    return numbers


def test_free_memory_counts_the_caching_allocators_free_blocks(cuda_memory):
    # mem_get_info misses what PyTorch reserved but does not use: 6 GiB free + (3 - 1) GiB cached.
    assert planning.free_bytes(torch.device("cuda")) == 8 * GiB


def _count_unet_passes(segmenter_class, parts, config):
    passes = []
    handle = parts.unet.register_forward_pre_hook(lambda module, args: passes.append(1))
    segmenter = segmenter_class(parts, config, torch.device("cpu"), torch.float32)
    handle.remove()
    return segmenter, len(passes)


@pytest.mark.parametrize("free_gib", [6, 0.5])
def test_first_image_labels_equal_an_unprobed_run(cuda_memory, tiny_config, photos, free_gib):
    config = tiny_config.replace(feature_samples=2, kmeans_restarts=2)
    cuda_memory["free"], cuda_memory["reserved"] = int(free_gib * GiB), 0
    planned, passes = _count_unet_passes(PlannedAsOnCuda, random_parts("tiny"), config)
    assert passes == 0
    plan = planned.memory_plan
    assert plan.budget_bytes == planning.usable_bytes(int(free_gib * GiB) - GiB)
    assert plan.chunk_size % 2 == 0 and 1 <= plan.decode_chunk <= plan.chunk_size
    image = photos["coffee"]
    first = planned.segment(image)
    # An unprobed run: the chunk fixed in the config (a different one: chunks do not change results).
    fixed = EmerDiffSegmenter(random_parts("tiny"), config.replace(chunk_size=2), torch.device("cpu"), torch.float32)
    expected = fixed.segment(image)
    # Both ran their 2 feature passes as one batch of 2: the same kernels, so the same k-means input.
    np.testing.assert_array_equal(first.lowres_labels, expected.lowres_labels)
    # The modulated runs went in batches of different sizes, whose kernels round differently (and
    # differently again on another CPU): the labels agree wherever the margin exceeds that rounding.
    assert_labels_agree(first.labels, expected.labels, _difference_maps(planned, image, first.lowres_labels),
                        _difference_maps(fixed, image, first.lowres_labels))


@torch.inference_mode()
def _difference_maps(segmenter, image, lowres):
    latent = segmenter._encode([to_rgb(image)])
    return segmenter._difference_maps(latent, segmenter._token_masks(torch.from_numpy(lowres), segmenter.config.num_masks))


def test_a_tight_budget_splits_the_decodes(tiny_config):
    """Decodes dominate at full resolution: when a chunk's decode does not fit, it is split, the UNet batch is not."""
    with torch.device("meta"):
        parts = random_parts("tiny")
    segmenter = EmerDiffSegmenter(parts, tiny_config.replace(chunk_size=8), torch.device("meta"), torch.float32)
    shapes = planning.ModelShapes.from_modules(segmenter.denoiser.unet, segmenter.vae, tiny_config.resolution)
    layers = segmenter.denoiser.state.probability_layers
    whole = planning.estimate_peak(shapes, 4, 15, 4, 8, 8, layers)
    half = planning.estimate_peak(shapes, 4, 15, 4, 8, 4, layers)
    assert whole["decodes"] > half["decodes"] and whole["modulated runs"] == half["modulated runs"]
    plan = planning.plan_chunks(shapes, 4, 15, 8, layers, (whole["peak"] + half["peak"]) // 2)
    assert plan.chunk_size == 8 and plan.decode_chunk < 8 and plan.estimated_peak_bytes <= plan.budget_bytes


# -- SD 1.x's shapes at 512 px, K = 25, on the meta device -------------------------------------------


@pytest.fixture(scope="module")
def sd15_meta_parts():
    with torch.device("meta"):
        return random_parts("sd15")


@pytest.mark.parametrize("free_gib", [80, 40, 24, 16])
def test_planner_fits_sd15_at_512_px_in_each_budget(sd15_meta_parts, free_gib, cuda_memory):
    config = EmerDiffConfig()  # 512 px, K = 25: the defaults
    cuda_memory.update(free=free_gib * GiB, reserved=0, allocated=0)
    segmenter = PlannedAsOnCuda(sd15_meta_parts, config, torch.device("meta"), torch.float16)
    plan, layers = segmenter.memory_plan, segmenter.denoiser.state.probability_layers
    assert plan.budget_bytes <= free_gib * GiB
    assert plan.estimated_peak_bytes <= plan.budget_bytes
    assert 2 <= plan.chunk_size <= 2 * config.num_masks and plan.chunk_size % 2 == 0
    self_attention = [n for n in attention_layer_names(segmenter.denoiser.unet) if n.endswith("attn1")]
    if free_gib >= 80:  # the whole probability store (about 20 GiB) fits the replay share
        assert layers == frozenset(self_attention)
    else:  # only the coarse layers, where probabilities are no larger than query and key
        assert layers and layers < frozenset(self_attention)


def test_smaller_budgets_never_get_bigger_batches(sd15_meta_parts, cuda_memory):
    plans = []
    for free_gib in (80, 40, 24, 16):
        cuda_memory.update(free=free_gib * GiB, reserved=0, allocated=0)
        plans.append(PlannedAsOnCuda(sd15_meta_parts, EmerDiffConfig(), torch.device("meta"), torch.float16).memory_plan)
    assert [p.chunk_size for p in plans] == sorted((p.chunk_size for p in plans), reverse=True)


# -- the estimate against allocations counted on a CPU ----------------------------------------------


@pytest.mark.parametrize("replay, chunk", [("auto", 8), ("query_key", 2)])
def test_estimate_is_within_15_percent_of_the_peak_counted_on_cpu(replay, chunk, photos):
    config = EmerDiffConfig(num_masks=4, resolution=128, feature_samples=2, kmeans_restarts=2,
                            attention_replay=replay, chunk_size=chunk)
    segmenter = EmerDiffSegmenter(random_parts("mid"), config, torch.device("cpu"), torch.float32)
    with LiveTensorBytes() as counted:
        segmenter.segment(photos["chelsea"])
    shapes = planning.ModelShapes.from_modules(segmenter.denoiser.unet, segmenter.vae, config.resolution)
    estimate = planning.estimate_peak(shapes, 4, len(segmenter.denoiser.timesteps), config.num_masks, chunk, chunk,
                                      segmenter.denoiser.state.probability_layers)
    assert estimate["peak"] == segmenter.memory_plan.estimated_peak_bytes
    assert abs(estimate["peak"] / counted.peak - 1) <= 0.15, (estimate, counted.peak)


def test_host_memory_counts_the_page_cache_and_respects_a_cgroup_limit(tmp_path, monkeypatch):
    """A full page cache leaves MemFree low; planning from it would silently shrink the replay budget."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         2000000 kB\nMemAvailable:   20000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    monkeypatch.setattr(planning, "MEMINFO", str(meminfo))
    monkeypatch.setattr(planning, "CGROUP", str(cgroup))
    assert planning.free_bytes(torch.device("cpu")) == 20000000 * 1024  # no cgroup files: no limit
    (cgroup / "memory.max").write_text("max\n")
    (cgroup / "memory.current").write_text("123\n")
    assert planning.free_bytes(torch.device("cpu")) == 20000000 * 1024
    (cgroup / "memory.max").write_text(f"{8 * 2**30}\n")
    (cgroup / "memory.current").write_text(f"{2 * 2**30}\n")
    assert planning.free_bytes(torch.device("cpu")) == 6 * 2**30


# -- what CUDA allocates beside the walks' tensors, counted on a CPU ----------------------------------


@pytest.fixture(scope="module")
def channels_last_segmenter():
    config = EmerDiffConfig(num_masks=4, resolution=128, feature_samples=2, kmeans_restarts=2, chunk_size=8,
                            attention_replay="query_key", channels_last=True)
    return EmerDiffSegmenter(random_parts("mid"), config, torch.device("cpu"), torch.float32)


def _counted(function, *args) -> int:
    with torch.inference_mode(), CudaLayoutBytes() as counted:
        function(*args)
    return counted.peak


def test_channels_last_decodes_fit_their_estimate_as_cuda_allocates_them(channels_last_segmenter):
    """A channels_last VAE would cost a contiguous copy per GroupNorm and a channels_last copy per convolution."""
    segmenter = channels_last_segmenter
    shapes = planning.ModelShapes.from_modules(segmenter.denoiser.unet, segmenter.vae, 128)
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    counted = _counted(segmenter._decode, latents, 8)
    images = 8 * 3 * 128 * 128 * 4  # the decoded chunk, concatenated
    estimate = planning._vae_decoder_peak(shapes, 8) + images
    assert counted <= estimate <= 1.15 * counted, (counted, estimate)


def test_a_channels_last_unets_layout_copies_stay_below_its_peak(channels_last_segmenter):
    """The copies are as wide as a resnet's input; the transformer blocks' feed-forward (8 C) is wider."""
    segmenter = channels_last_segmenter
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    segmenter.denoiser.state.start("plain")
    counted = _counted(segmenter.denoiser._unet, latents, 261)
    default_layout = EmerDiffSegmenter(random_parts("mid"), segmenter.config.replace(channels_last=False),
                                       torch.device("cpu"), torch.float32)
    default_layout.denoiser.state.start("plain")
    assert counted == _counted(default_layout.denoiser._unet, latents, 261)
    shapes = planning.ModelShapes.from_modules(segmenter.denoiser.unet, segmenter.vae, 128)
    assert abs(planning._unet_peak(shapes, 4, 8) / counted - 1) <= 0.15


def test_recording_probabilities_holds_one_steps_float32_logits_as_planned():
    """15 steps of a 32x32-token layer in float16: the store, plus one step's float32 logits and softmax.

    All 15 steps' float32 logits and softmax at once would take 15 times that (2 x 7.5 GiB per
    64x64 layer of SD at 512 px, beyond what the inversion's plan allows)."""
    layer = planning.AttentionLayer("down_blocks.0.attentions.0.transformer_blocks.0.attn1", True, 1024, 8, 320)
    generator = torch.Generator().manual_seed(0)
    query, key = (torch.randn(15, 8, 1024, 40, generator=generator).half() for _ in range(2))
    counted = _counted(attention_probabilities, query, key)
    inputs = 2 * query.untyped_storage().nbytes()  # counted too: made before, first seen through views
    store = 15 * layer.probability_elements * 2
    estimate = inputs + store + planning.probability_transient_bytes((layer,), frozenset([layer.name]))
    assert counted <= estimate <= 1.15 * counted, (counted, estimate)
