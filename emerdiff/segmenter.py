"""EmerDiffSegmenter: image(s) in, label maps out (the method step by step: docs/method.md)."""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from emerdiff.attention import layer_grid_side
from emerdiff.config import DEFAULT_MODEL, EmerDiffConfig
from emerdiff.denoising import Denoiser
from emerdiff.images import resize_labels, to_model_input, to_rgb
from emerdiff.kmeans import kmeans
from emerdiff.loading import ModelLoadError, StableDiffusionParts, load_parts, resolve_device, resolve_dtype
from emerdiff.maps import confidence_margin, difference_norms, mean_per_label, segment_embeddings
from emerdiff.planning import (CPU_CHUNK, ChunkSizes, MemoryPlan, ModelShapes, estimate_peak, free_bytes, plan_chunks,
                               usable_bytes)
from emerdiff.segmentation import Segmentation, segment_statistics

__all__ = ["EmerDiffSegmenter", "ModelLoadError"]

logger = logging.getLogger(__name__)

ImageLike = Image.Image | np.ndarray
# Shares of usable memory the stored attention probabilities may take (SD 1.5 at 512 px: about 20 GiB in fp16).
# On a CPU the memory is shared with the data pipeline and possibly other actors, hence the smaller share.
_REPLAY_SHARE = {"cuda": 0.4, "cpu": 0.25}
_RECOMPILE_LIMIT = 32  # graphs per code object of a compiled transformer block (torch_compile)


class EmerDiffSegmenter:
    def __init__(self, parts: StableDiffusionParts, config: EmerDiffConfig, device: torch.device, dtype: torch.dtype):
        self.config = config
        self.device = device
        self.dtype = dtype
        self._parts = parts
        # The UNet and text encoder run in ``dtype`` (load_parts loads them so; parts built otherwise
        # are cast here, so the prompt, the latents and the weights always agree). The VAE always runs
        # in float32: decoded images are compared pixel by pixel (spec, determinism conventions), and
        # SD's VAE overflows in float16 on some images.
        self.vae = _on(parts.vae, device, torch.float32).eval().requires_grad_(False)
        unet = _on(parts.unet, device, dtype).eval().requires_grad_(False)
        text_encoder = _on(parts.text_encoder, device, dtype).eval().requires_grad_(False)
        if dtype == torch.bfloat16:
            logger.warning("bfloat16 keeps 8 bits of mantissa (float16: 11): labels agree with float32 on fewer pixels "
                           "(docs/performance.md, 'Precision'); prefer float16 on GPUs.")
        prompt = _empty_prompt_embedding(parts.tokenizer, text_encoder, device)
        # Memory is planned once, here, before any image, from shapes alone (emerdiff/planning.py).
        budget = usable_bytes(free_bytes(device, self._memory_device_type()))
        replay_budget = int(budget * _REPLAY_SHARE.get(self._memory_device_type(), 0))
        self.denoiser = Denoiser(unet, parts.scheduler_config, prompt, config, replay_budget)
        _apply_runtime_options(unet, self.vae, config)
        self._modulation_side = layer_grid_side(unet, config.modulation_layer, config.resolution)
        self.memory_plan = self._plan_memory(budget)
        self.chunks = ChunkSizes(self.memory_plan)  # what the stages use: the plan's until memory runs out

    @classmethod
    def from_pretrained(
        cls,
        source: str = DEFAULT_MODEL,
        config: EmerDiffConfig | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        allow_pickle: bool = False,
    ) -> EmerDiffSegmenter:
        """Load a Stable Diffusion 1.x/2.x model; see ``emerdiff.loading.load_parts`` for ``source``.

        Device defaults to CUDA when present, else CPU; dtype to float16 on CUDA, float32 on CPU.
        Raises ModelLoadError (with what to pass instead) when the model cannot be loaded, and
        ValueError when the config does not fit the model (e.g. an unknown layer name).
        """
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        parts = load_parts(source, dtype, allow_pickle=allow_pickle)
        return cls(parts, config or EmerDiffConfig(), device, dtype)

    @functools.cached_property
    def model_info(self) -> dict:
        return {
            "model": self._parts.source,
            "weights_sha256": self._parts.weights_sha256(),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            **float32_precision(self.device.type, self.config.tf32),
        }

    # -- public API ------------------------------------------------------------------------------

    def segment(self, image: ImageLike) -> Segmentation:
        return self.segment_batch([image])[0]

    def segment_batch(self, images: Sequence[ImageLike]) -> list[Segmentation]:
        """Segment several images; each result is what ``segment`` would give it alone."""
        pictures = [to_rgb(image) for image in images]
        with torch.inference_mode(), self._precision():
            latents = self._encode(pictures)
            features = self._features(latents)  # (batch, tokens, channels)
            return [
                self._upsample(picture, latents[i : i + 1], features[i], self._lowres_labels(features[i]), self.config.num_masks)
                for i, picture in enumerate(pictures)
            ]

    def upsample(self, image: ImageLike, lowres_labels: np.ndarray) -> Segmentation:
        """The modulated-denoising stage alone, from low-resolution labels the caller supplies.

        ``lowres_labels``: an (h, w) map of non-negative integer ids, any grid size (it is resampled
        to the modulation layer's token grid by nearest neighbour). Ids 0..max become the masks.
        The feature passes still run, for the segments' embeddings; they do not affect the labels.
        """
        lowres = _checked_lowres(lowres_labels)
        picture = to_rgb(image)
        with torch.inference_mode(), self._precision():
            latent = self._encode([picture])
            features = self._features(latent)[0]
            lowres_ids = torch.from_numpy(lowres).to(self.device)
            return self._upsample(picture, latent, features, lowres_ids, int(lowres.max()) + 1)

    # -- the method, step by step ----------------------------------------------------------------

    def _encode(self, pictures: list[Image.Image]) -> torch.Tensor:
        # 1. Input: Lanczos resize, normalise, VAE posterior mean scaled by the model's factor.
        # One image per encode: the encoder's memory does not grow with the batch (planning.py counts one).
        latents = [
            self.vae.encode(to_model_input(p, self.config.resolution).to(self.device)).latent_dist.mean for p in pictures
        ]
        return torch.cat(latents) * self.vae.config.scaling_factor  # (batch, 4, h, w) float32

    def _features(self, latents: torch.Tensor) -> torch.Tensor:
        # 3. Feature passes: N draws from one fresh CPU generator, the same for every image of the batch.
        generator = torch.Generator("cpu").manual_seed(self.config.seed)
        noise = torch.stack([
            torch.randn(latents.shape[1:], generator=generator, dtype=torch.float32)
            for _ in range(self.config.feature_samples)
        ]).to(self.device)  # (N, 4, h, w)
        return self._shrinking_on_oom("unet", lambda chunk: self.denoiser.query_features(latents, noise, chunk))

    def _lowres_labels(self, features: torch.Tensor) -> torch.Tensor:
        # 4. Low-res masks: k-means on the feature tokens, as an (h, w) grid.
        config = self.config
        assignment = kmeans(features, config.num_masks, config.kmeans_iterations, config.kmeans_restarts, config.seed)
        side = _grid_side(features.shape[0])
        return assignment.view(side, side)

    def _upsample(self, picture: Image.Image, latent, features, lowres: torch.Tensor, num_masks: int) -> Segmentation:
        masks = self._token_masks(lowres, num_masks)  # (K, tokens)
        differences = self._difference_maps(latent, masks)  # (K, R, R)
        # 11. Each pixel goes to the mask whose nudge changed it most (ties: lowest id).
        labels = differences.argmax(dim=0)  # (R, R)
        scores = mean_per_label(confidence_margin(differences), labels, num_masks)
        embeddings = segment_embeddings(labels, features, num_masks)  # 12.
        full = resize_labels(labels.cpu().numpy().astype(np.int32), picture.height, picture.width)
        area, bbox = segment_statistics(full, num_masks)
        return Segmentation(
            labels=full,
            lowres_labels=lowres.cpu().numpy().astype(np.int32),
            embeddings=embeddings.cpu().numpy().astype(np.float32),
            area=area,
            bbox=bbox,
            score=scores.cpu().numpy().astype(np.float32),
        )

    def _token_masks(self, lowres: torch.Tensor, num_masks: int) -> torch.Tensor:
        """(K, tokens) binary masks on the modulation layer's grid, flattened row-major (spec step 8)."""
        side = self._modulation_side
        if tuple(lowres.shape) != (side, side):
            lowres = torch.from_numpy(resize_labels(lowres.cpu().numpy(), side, side)).to(self.device)
        ids = torch.arange(num_masks, device=self.device)
        return (lowres.reshape(1, -1) == ids[:, None]).to(torch.float32)

    def _difference_maps(self, latent: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(K, R, R) float32 ||blur(I-) - blur(I+)|| per pixel for every mask; zero for empty masks (steps 5-10)."""
        resolution = self.config.resolution
        differences = torch.zeros(masks.shape[0], resolution, resolution, device=self.device)
        present = torch.nonzero(masks.sum(dim=1) > 0).flatten().tolist()
        if not present:
            return differences
        # 5. The drawn samples x_t (step 0 is t_m, where every trajectory starts) and the noise maps z_t.
        samples = self.denoiser.inversion.samples(latent, torch.Generator("cpu").manual_seed(self.config.seed))
        noise_maps = self._shrinking_on_oom("unet", lambda chunk: self.denoiser.invert(latent, samples, chunk))
        # 8. Runs ordered (-M0, +M0, -M1, +M1, ...); a group of whole pairs (a UNet chunk's worth) at a time.
        strength = self.config.modulation_strength
        signs = torch.tensor([-strength, strength], device=self.device)
        modulations = (signs[None, :, None] * masks[present][:, None, :]).reshape(2 * len(present), -1)
        first = 0
        while first < len(modulations):
            group = modulations[first : first + max(self.chunks.unet // 2, 1) * 2]
            final = self._shrinking_on_oom("unet", lambda chunk: torch.cat([
                self.denoiser.modulated_runs(samples[:1], noise_maps, runs) for runs in group.split(chunk)]))
            images = self._shrinking_on_oom("decode", lambda chunk: self._decode(final, chunk))
            pair_ids = present[first // 2 : (first + len(group)) // 2]
            # 10. Blur and norm of the pair's signed difference.
            differences[pair_ids] = difference_norms(images[0::2], images[1::2], self.config.blur_kernel_size, self.config.blur_sigma)
            first += len(group)
        return differences

    def _decode(self, latents: torch.Tensor, chunk: int) -> torch.Tensor:
        # 9. Decode in float32, not clamped; ``chunk`` latents at a time.
        scale = self.vae.config.scaling_factor
        return torch.cat([self.vae.decode(piece / scale, return_dict=False)[0] for piece in latents.split(chunk)])

    def _shrinking_on_oom(self, kind: str, compute: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``compute(chunk)`` with the chunk in use for ``kind``; on out-of-memory, again with it halved, down to 1.

        Each stage restarts whole (the inversion's recording starts afresh), so a retry gives what
        the smaller chunk would have given from the start. At 1, the error propagates.
        """
        while True:
            try:
                return compute(getattr(self.chunks, kind))
            except torch.OutOfMemoryError:
                if not self.chunks.halve(kind):
                    raise
            # Retried here, outside the handler: the failed attempt's tensors are freed by now.

    @contextlib.contextmanager
    def _precision(self):
        """Float32 convolutions in TF32 or not, as the config says, whatever the process default (docs/method.md)."""
        convolutions, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
        previous = convolutions.fp32_precision, matmul.fp32_precision
        settings = float32_precision("cuda", self.config.tf32)
        convolutions.fp32_precision, matmul.fp32_precision = settings["float32_convolutions"], settings["float32_matmul"]
        try:
            yield
        finally:
            convolutions.fp32_precision, matmul.fp32_precision = previous

    def _memory_device_type(self) -> str:
        """Which memory the plan reads: the device's type (tests plan as on CUDA while running on a CPU)."""
        return self.device.type

    def _plan_memory(self, budget: int) -> MemoryPlan:
        """Chunk sizes for this segmenter's every image: the config's, the CPU's fixed one, or planned on CUDA."""
        shapes = ModelShapes.from_modules(self.denoiser.unet, self.vae, self.config.resolution)
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        steps, masks = len(self.denoiser.timesteps), self.config.num_masks
        layers = self.denoiser.state.probability_layers
        if self.config.chunk_size is None and self._memory_device_type() == "cuda":
            plan = plan_chunks(shapes, element_bytes, steps, 2 * masks, layers, budget)
        else:
            chunk = self.config.chunk_size or CPU_CHUNK
            peak = estimate_peak(shapes, element_bytes, steps, masks, chunk, chunk, layers)["peak"]
            plan = MemoryPlan(chunk, chunk, peak, None)
        logger.info("memory plan: %s, %d probability layers", plan, len(layers))
        return plan


def _apply_runtime_options(unet: torch.nn.Module, vae: torch.nn.Module, config: EmerDiffConfig) -> None:
    """channels_last and torch_compile: how the modules run, not what they compute (config.py)."""
    if config.channels_last:
        # The UNet only: on CUDA, GroupNorm copies a channels_last input to the default layout and the
        # next convolution copies it back, which at the VAE's full-resolution widths is gigabytes per
        # decode chunk (about 12.5 GiB for 50 latents of SD at 512 px). In the UNet the copies stay
        # below its transformer blocks' peak (tests/emerdiff/test_planning.py counts both).
        unet.to(memory_format=torch.channels_last)
    if config.torch_compile in ("unet", "unet+vae"):
        _compile_unet_blocks(unet)
    if config.torch_compile in ("vae", "unet+vae"):
        vae.decoder.compile()  # in place: module paths, hooks and deep copies keep working


def _compile_unet_blocks(unet: torch.nn.Module) -> None:
    """Regional compilation: diffusers' ``compile_repeated_blocks`` (each BasicTransformerBlock), attention left eager.

    EmerDiff's attention processors branch on per-run Python state (mode, step, layer name) and
    keep tensors in lists. Traced by dynamo, every layer and step guards on those values and
    becomes a new graph until dynamo's recompile limit sends the block back to eager. So each
    attention layer runs eagerly (one graph break per call) and the code around it is compiled:
    norms, residual adds, the feed-forward. ResNet blocks are not compiled: their many in/out
    widths share one code object, far more graphs than the limit.
    """
    import torch._dynamo
    from diffusers.models.attention_processor import Attention

    # With dynamic shapes each piece of the block's code still needs a graph per width (3 in SD) x
    # batch 1 or not (size 1 is always specialised) x prompt batch 1 or not (the shared prefix):
    # 9 at SD's layout, over dynamo's default limit of 8, past which a piece would stay eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    for module in unet.modules():
        if isinstance(module, Attention):
            _run_eagerly(module)
    unet.compile_repeated_blocks(dynamic=True)


def _run_eagerly(attention: torch.nn.Module) -> None:
    """Make dynamo call ``attention``'s forward without tracing it (diffusers' ``Attention.forward``
    hands its inputs to the processor; tests/emerdiff/test_diffusers_calls.py pins that)."""
    # A method bound to this module, not a closure over its forward, so that deep copies (the
    # slow reference copies the UNet) call their own attention.
    attention.forward = types.MethodType(torch.compiler.disable(type(attention).forward), attention)


def float32_precision(device_type: str, tf32: bool) -> dict[str, str]:
    """How float32 convolutions and matrix multiplies run on ``device_type``: "tf32" or "ieee" (true float32).

    TF32 exists only on CUDA; there it is the config's choice for convolutions (torch's default
    would be TF32 too), while matrix multiplies are always IEEE (torch's default as well).
    """
    convolutions = "tf32" if device_type == "cuda" and tf32 else "ieee"
    return {"float32_convolutions": convolutions, "float32_matmul": "ieee"}


def _on(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # Cast only when needed: diffusers warns on every dtype cast, even to the dtype a model already has.
    module = module.to(device)
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def _grid_side(tokens: int) -> int:
    side = int(round(tokens**0.5))
    if side * side != tokens:
        raise ValueError(f"expected a square token grid, got {tokens} tokens")
    return side


def _checked_lowres(lowres_labels) -> np.ndarray:
    array = np.asarray(lowres_labels)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"lowres_labels must be a non-empty (h, w) array, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise ValueError("lowres_labels must hold non-negative integer ids")
    if array.max() >= 65536:
        raise ValueError(f"lowres_labels ids must be < 65536, got {array.max()}")
    return array.astype(np.int64)


def _empty_prompt_embedding(tokenizer, text_encoder, device: torch.device) -> torch.Tensor:
    # 2. The empty prompt, padded to model_max_length; its last hidden state, computed once per model.
    tokens = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        return text_encoder(tokens.input_ids.to(device))[0]
