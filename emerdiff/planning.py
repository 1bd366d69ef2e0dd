"""Memory planning: how many modulated runs share a UNet batch, estimated from shapes, never measured.

The segmenter plans once, when it is built, before any image: nothing here runs a model (running
one would overwrite the recorded attention of an image in flight, and costs a pass). The estimate
is a walk over SD's UNet and VAE decoder that adds up the activations alive at each point of an
inference-mode forward pass, plus what the method keeps between passes (the recorded attention,
the images of a chunk). Checked against allocations counted on a CPU (tests/emerdiff/test_planning.py).

Free memory on CUDA is what the caching allocator can hand out: the driver's free memory plus the
blocks PyTorch has reserved but not allocated (``mem_get_info`` alone misses the latter, so plans
made after a first image would shrink).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from emerdiff.attention import attention_layer_names, layer_grid_side

logger = logging.getLogger(__name__)

HEADROOM = 0.85  # share of free memory a plan may use: allocator fragmentation, cuDNN/cuBLAS workspaces
RESERVE_BYTES = 512 * 2**20  # kept free on a GPU whatever its size (workspaces, the CUDA graph pool, other tensors)
CPU_CHUNK = 8  # on a CPU, larger batches buy little and cost memory
VAE_BYTES = 4  # the VAE always runs in float32 (emerdiff/segmenter.py)
MEMINFO = "/proc/meminfo"
CGROUP = "/sys/fs/cgroup"  # cgroup v2, as containers and Kubernetes pods see it


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
    name: str
    is_self: bool
    tokens: int
    heads: int
    channels: int

    @property
    def probability_elements(self) -> int:
        return self.heads * self.tokens**2  # (heads, tokens, tokens)

    @property
    def query_key_elements(self) -> int:
        return 2 * self.tokens * self.channels  # query and key, (tokens, channels) each


def attention_shapes(unet: torch.nn.Module, resolution: int) -> tuple[AttentionLayer, ...]:
    """Every attention layer of ``unet`` with its token count at ``resolution``."""
    layers = []
    for name in attention_layer_names(unet):
        attn = unet.get_submodule(name)
        layers.append(AttentionLayer(name, name.endswith("attn1"), layer_grid_side(unet, name, resolution) ** 2,
                                     attn.heads, attn.to_q.out_features))
    return tuple(layers)


def probability_layers(attention: tuple[AttentionLayer, ...], steps: int, replay: str, budget_bytes: int,
                       element_bytes: int) -> frozenset[str]:
    """Self-attention layers whose reference run stores probabilities instead of query/key.

    ``replay``: "query_key" (none), "probabilities" (all), or "auto": the layers where the
    probabilities take no more memory than query and key (heads * tokens <= 2 * channels, the
    coarse layers), and every layer when the whole store fits in ``budget_bytes``.
    """
    if replay == "query_key":
        return frozenset()
    self_layers = [layer for layer in attention if layer.is_self]
    every = steps * element_bytes * sum(layer.probability_elements for layer in self_layers)
    if replay == "probabilities" or every <= budget_bytes:
        return frozenset(layer.name for layer in self_layers)
    return frozenset(layer.name for layer in self_layers if layer.probability_elements <= layer.query_key_elements)


@dataclasses.dataclass(frozen=True)
class ModelShapes:
    """What the estimate needs from a model: channel widths, layers per block, attention layers."""

    unet_channels: tuple[int, ...]
    unet_layers: int
    unet_attention_levels: tuple[bool, ...]  # per down level: has transformer blocks
    vae_channels: tuple[int, ...]
    vae_layers: int
    latent_channels: int
    resolution: int
    attention: tuple[AttentionLayer, ...]

    @classmethod
    def from_modules(cls, unet: torch.nn.Module, vae: torch.nn.Module, resolution: int) -> ModelShapes:
        return cls(
            unet_channels=tuple(unet.config.block_out_channels),
            unet_layers=int(unet.config.layers_per_block),
            unet_attention_levels=tuple("CrossAttn" in kind for kind in unet.config.down_block_types),
            vae_channels=tuple(vae.config.block_out_channels),
            vae_layers=int(vae.config.layers_per_block),
            latent_channels=int(vae.config.latent_channels),
            resolution=resolution,
            attention=attention_shapes(unet, resolution),
        )


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    chunk_size: int  # modulated runs (and feature/inversion rows) per UNet batch
    decode_chunk: int  # latents per VAE decode
    estimated_peak_bytes: int  # beyond the weights
    budget_bytes: int | None  # None on a CPU, where the chunk is fixed

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ChunkSizes:
    """The chunk sizes in use: the plan's, until running out of memory halves one for good.

    The estimate can miss what a device allocates beside the tensors (fragmentation, workspaces,
    another process on the GPU); halving the chunk that failed, down to 1, and keeping it for
    every later image, costs a little speed instead of the image.
    """

    def __init__(self, plan: MemoryPlan):
        self.unet = plan.chunk_size  # rows per UNet batch (feature passes, inversion steps, modulated runs)
        self.decode = plan.decode_chunk  # latents per VAE decode

    def halve(self, kind: str) -> bool:
        """Halve the ``kind`` ("unet" or "decode") chunk; False when it is 1 already."""
        size = getattr(self, kind)
        if size == 1:
            return False
        setattr(self, kind, size // 2)
        logger.warning("out of device memory at %s chunk %d: continuing at %d for the rest of this segmenter's life",
                       kind, size, size // 2)
        return True


# -- free memory -----------------------------------------------------------------------------------


def free_bytes(device: torch.device, device_type: str | None = None) -> int:
    """Bytes this process can still allocate on ``device``: on CUDA from the caching allocator's view."""
    if (device_type or device.type) == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    return _host_available_bytes()


def _host_available_bytes() -> int:
    """Host memory a new allocation can get: MemAvailable (free plus reclaimable page cache), capped by a cgroup limit.

    MemFree alone (``SC_AVPHYS_PAGES``) leaves out the page cache, so once the cache has filled up
    after a few reads a plan from it would keep shrinking, and timings would depend on what ran before.
    """
    available = None
    try:
        with open(MEMINFO) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(available, _cgroup_headroom_bytes() or available)


def _cgroup_headroom_bytes() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), or None when unlimited or unknown."""
    try:
        with open(f"{CGROUP}/memory.max") as limit_file, open(f"{CGROUP}/memory.current") as current_file:
            limit, current = limit_file.read().strip(), current_file.read().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - int(current))


def usable_bytes(free: int) -> int:
    return max(0, int(free * HEADROOM) - RESERVE_BYTES)


# -- the plan --------------------------------------------------------------------------------------


def plan_chunks(shapes: ModelShapes, element_bytes: int, steps: int, runs: int, probability_layers: frozenset[str],
                budget: int) -> MemoryPlan:
    """The largest even UNet chunk (at most ``runs``), then the largest decode chunk, whose estimated peak fits ``budget``.

    The UNet chunk comes first: it sets how well the GPU is used, while decodes are a small share
    of the work at any batch size. When not even 2 runs and 1 decode fit, the plan says so (logged)
    and takes the smallest.
    """
    store = store_bytes(shapes, element_bytes, steps, probability_layers)
    for chunk in range(max(2, runs + runs % 2), 1, -2):
        if store + _unet_peak(shapes, element_bytes, chunk) > budget:
            continue  # the UNet batch alone does not fit: no decode chunk helps
        for decode_chunk in range(chunk, 0, -1):
            peak = estimate_peak(shapes, element_bytes, steps, runs // 2, chunk, decode_chunk, probability_layers)["peak"]
            if peak <= budget:
                return MemoryPlan(chunk, decode_chunk, peak, budget)
    peak = estimate_peak(shapes, element_bytes, steps, runs // 2, 2, 1, probability_layers)["peak"]
    logger.warning("EmerDiff needs about %.1f GiB of free device memory at the smallest chunk, %.1f GiB are usable: "
                   "expect out-of-memory errors (lower resolution or use attention_replay='query_key').",
                   peak / 2**30, budget / 2**30)
    return MemoryPlan(2, 1, peak, budget)


def estimate_peak(shapes: ModelShapes, element_bytes: int, steps: int, num_masks: int, chunk: int, decode_chunk: int,
                  probability_layers: frozenset[str]) -> dict[str, int]:
    """Estimated bytes alive at the peak of each stage of one image, beyond the weights, and their max ("peak").

    The recorded attention outlives the image (it is cleared when the next one records), so it
    counts in every stage. ``chunk`` rows per UNet batch (features, inversion steps, modulated runs).
    """
    store = store_bytes(shapes, element_bytes, steps, probability_layers)
    side = shapes.resolution // 8
    latent = shapes.latent_channels * side * side * 4  # float32 between passes
    images = 3 * shapes.resolution**2 * 4
    differences = num_masks * shapes.resolution**2 * 4
    # Besides the walks: latents between passes (the drawn samples, noise maps, a chunk's trajectories),
    # the (K, R, R) difference maps and a chunk's decoded images, all float32.
    stages = {
        "encode": store + _vae_encoder_peak(shapes, 1),
        "features": store + _unet_peak(shapes, element_bytes, chunk) + chunk * latent,
        "inversion": store + _unet_peak(shapes, element_bytes, min(chunk, steps)) + 4 * steps * latent
        + probability_transient_bytes(shapes.attention, probability_layers),
        "modulated runs": store + _unet_peak(shapes, element_bytes, chunk) + 3 * chunk * latent + 2 * steps * latent
        + differences,
        "decodes": store + _vae_decoder_peak(shapes, decode_chunk) + chunk * (latent + images) + 2 * steps * latent
        + differences,
    }
    return {**stages, "store": store, "peak": max(stages.values())}


def store_bytes(shapes: ModelShapes, element_bytes: int, steps: int, probability_layers: frozenset[str]) -> int:
    """The reference run's recorded attention: per step, probabilities or query and key (self), outputs (cross)."""
    total = 0
    for layer in shapes.attention:
        if not layer.is_self:
            total += layer.tokens * layer.channels
        elif layer.name in probability_layers:
            total += layer.probability_elements
        else:
            total += layer.query_key_elements
    return steps * total * element_bytes


def probability_transient_bytes(attention: tuple[AttentionLayer, ...], probability_layers: frozenset[str]) -> int:
    """One step's float32 logits, softmax, query and key in the largest recorded layer, alive while it records.

    ``emerdiff.attention.attention_probabilities`` computes them one step at a time.
    """
    return max((4 * (2 * layer.probability_elements + layer.query_key_elements)
                for layer in attention if layer.name in probability_layers), default=0)


# -- the walks ---------------------------------------------------------------------------------------
# Sizes in elements of one batch row; the walks return the largest sum alive at once, times the bytes.


def _resnet(inputs: int, outputs: int, pixels: int) -> int:
    # The input stays alive (the shortcut); norm and SiLU make two more of its width, then convolutions
    # of the output width: input + max(2 in, in + out, 3 out) at the widest point.
    return pixels * (inputs + max(2 * inputs, inputs + outputs, 3 * outputs))


def _transformer(channels: int, pixels: int) -> int:
    # Transformer2DModel keeps its input for the residual; inside the block the hidden states and the
    # norm's output stay alive through the feed-forward, whose GEGLU projects to 8C, then gates (4C, 4C).
    return pixels * channels * (1 + 1 + 1 + 8 + 4 + 4)


def _unet_peak(shapes: ModelShapes, element_bytes: int, batch: int) -> int:
    """One UNet pass: the down path's skip tensors alive until the up path consumes them, plus each block's work."""
    channels, layers = shapes.unet_channels, shapes.unet_layers
    levels = len(channels)
    side = shapes.resolution // 8
    skips: list[int] = [channels[0] * side * side]  # conv_in's output
    peak = 0
    current = channels[0]
    for level in range(levels):  # the down path
        pixels = (side >> level) ** 2
        for _ in range(layers):
            work = _resnet(current, channels[level], pixels)
            if shapes.unet_attention_levels[level]:
                work = max(work, _transformer(channels[level], pixels))
            peak = max(peak, sum(skips) + work)
            current = channels[level]
            skips.append(current * pixels)
        if level < levels - 1:
            skips.append(current * (side >> (level + 1)) ** 2)
    pixels = (side >> (levels - 1)) ** 2
    peak = max(peak, sum(skips) + max(_resnet(current, current, pixels), _transformer(current, pixels)))
    for up in range(levels):  # the up path: level levels-1 first; each resnet concatenates one skip
        level = levels - 1 - up
        pixels = (side >> level) ** 2
        block_skips = skips[-(layers + 1):]
        for index in range(layers + 1):
            skip = block_skips[-1 - index]
            inputs = current + skip // pixels
            # The block's skips stay alive until it returns; the concatenation is a new tensor.
            work = inputs * pixels + _resnet(inputs, channels[level], pixels)
            if shapes.unet_attention_levels[level]:
                work = max(work, _transformer(channels[level], pixels))
            peak = max(peak, sum(skips) + current * pixels + work)
            current = channels[level]
        del skips[-(layers + 1):]
        if level > 0:  # upsampler: nearest 2x, then a convolution
            up_pixels = (side >> (level - 1)) ** 2
            peak = max(peak, sum(skips) + current * (pixels + 2 * up_pixels))
    return batch * peak * element_bytes


def _vae_decoder_peak(shapes: ModelShapes, batch: int) -> int:
    """One decode of ``batch`` latents in float32: the up path at full width, ending at the image's resolution."""
    channels = shapes.vae_channels[::-1]
    side = shapes.resolution // 2 ** (len(channels) - 1)  # the latent's side
    pixels = side * side
    current = channels[0]
    peak = _resnet(current, current, pixels) + current * pixels  # mid block (its attention is fused or flash)
    for index, width in enumerate(channels):
        for _ in range(shapes.vae_layers + 1):
            peak = max(peak, _resnet(current, width, pixels))
            current = width
        if index < len(channels) - 1:
            up_pixels = pixels * 4
            peak = max(peak, current * (pixels + 2 * up_pixels))
            pixels = up_pixels
    peak = max(peak, current * pixels * 3)  # norm_out, SiLU, conv_out
    return batch * peak * VAE_BYTES


def _vae_encoder_peak(shapes: ModelShapes, batch: int) -> int:
    """One encode in float32: the down path from the image's resolution, widest at the first blocks."""
    channels = shapes.vae_channels
    pixels = shapes.resolution**2
    current = channels[0]
    peak = current * pixels + 3 * pixels  # conv_in's output and the input image
    for index, width in enumerate(channels):
        for _ in range(shapes.vae_layers):
            peak = max(peak, _resnet(current, width, pixels))
            current = width
        if index < len(channels) - 1:
            peak = max(peak, current * (pixels + pixels // 4 * 2))
            pixels //= 4
    return batch * peak * VAE_BYTES
