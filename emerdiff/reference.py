"""The slow reference: EmerDiff written as plainly as docs/method.md reads.

SLOW BY DESIGN, so that agreement with the production path means something: fp32, one UNet pass
at a time (the N feature passes too), one mask and one sign at a time, attention written out as
softmax(q kᵀ / √d) v in every layer, a full 2-D blur kernel, its own ᾱ and timestep grid (no
diffusers scheduler), its own image resize, label resize and k-means. It shares nothing with the
production path beyond ``emerdiff.loading`` and ``EmerDiffConfig``. Tests and benchmarks import
it; nothing in production does.

    reference = ReferenceEmerDiff.from_pretrained("tiny", config)
    labels = reference.segment(image)                     # (H, W) ids in 0..K-1
    labels = reference.upsample(image, lowres_labels)     # the same, from given low-res masks
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emerdiff.config import EmerDiffConfig
from emerdiff.loading import StableDiffusionParts, load_parts


@dataclasses.dataclass
class Inversion:
    """Steps 5 and 7 for one image: everything the trajectories of that image share."""

    latent: torch.Tensor  # z₀, (1, 4, R/8, R/8)
    samples: dict[int, torch.Tensor]  # t -> the drawn x_t, for every t of the window
    noise_maps: dict[int, torch.Tensor]  # t -> z_t
    recorded: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]  # (layer, t) -> (to_q, to_k) outputs


class ReferenceEmerDiff:
    """EmerDiff, one pass at a time. Owns its modules: nothing it does touches a caller's model."""

    def __init__(self, parts: StableDiffusionParts, config: EmerDiffConfig, device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.unet = parts.unet.float().to(self.device).eval()
        self.vae = parts.vae.float().to(self.device).eval()
        self.text_encoder = parts.text_encoder.float().to(self.device).eval()
        self.tokenizer = parts.tokenizer
        self.scheduler_config = dict(parts.scheduler_config)
        _check_scheduler(self.scheduler_config)
        self.alphas_cumprod = _alphas_cumprod(self.scheduler_config)
        self.grid = _timestep_grid(self.scheduler_config, config.num_inference_steps)
        self.attention_layers = _attention_layers(self.unet)
        _check_config(config, self.attention_layers, self.grid)
        self._state = _AttentionState()
        self.unet.set_attn_processor(
            {f"{name}.processor": _ExplicitAttention(name, self._state) for name in self.attention_layers}
        )
        self.prompt = self._empty_prompt()

    @classmethod
    def from_pretrained(cls, source: str, config: EmerDiffConfig, device: str | torch.device = "cpu") -> ReferenceEmerDiff:
        """Its own fp32 copy of the model: ``"tiny"``, a diffusers folder, or what else ``load_parts`` reads."""
        return cls(load_parts(source, torch.float32), config, device)

    @classmethod
    def from_parts(
        cls, parts: StableDiffusionParts, config: EmerDiffConfig, device: str | torch.device | None = None
    ) -> ReferenceEmerDiff:
        """fp32 deep copies of already-loaded parts (by default on their device); ``parts`` stays untouched."""
        if device is None:
            device = next(parts.unet.parameters()).device
        # Memory layout does not change results; the reference stays on the default one.
        unet = copy.deepcopy(parts.unet).to(memory_format=torch.contiguous_format)
        vae = copy.deepcopy(parts.vae).to(memory_format=torch.contiguous_format)
        own = StableDiffusionParts(
            unet=unet,
            vae=vae,
            text_encoder=copy.deepcopy(parts.text_encoder),
            tokenizer=copy.deepcopy(parts.tokenizer),
            scheduler_config=copy.deepcopy(dict(parts.scheduler_config)),
            source=parts.source,
        )
        return cls(own, config, device)

    # -- public API ---------------------------------------------------------------------------

    @torch.no_grad()
    def segment(self, image) -> np.ndarray:
        """Labels (H, W), int64 ids in 0..num_masks-1, at the image's own size."""
        picture = _to_rgb(image)
        latent = self._encode(picture)
        lowres = self._lowres_masks(latent)
        return self._labels(picture, latent, lowres, self.config.num_masks)

    @torch.no_grad()
    def upsample(self, image, lowres_labels) -> np.ndarray:
        """Labels (H, W) at the image's size from given low-res labels (masks: ids 0..max)."""
        picture = _to_rgb(image)
        lowres = _check_lowres(lowres_labels)
        return self._labels(picture, self._encode(picture), lowres, int(lowres.max()) + 1)

    @torch.no_grad()
    def difference_maps(self, image, lowres_labels) -> torch.Tensor:
        """(K, R, R) float32 d_i (step 10, blurred images), K = max id + 1, before the argmax."""
        lowres = _check_lowres(lowres_labels)
        return self._difference_maps(self._encode(_to_rgb(image)), lowres, int(lowres.max()) + 1)

    @torch.no_grad()
    def features(self, image) -> torch.Tensor:
        """(tokens, channels) step-3 features: the feature layer's to_q output, mean of N passes."""
        return self._features(self._encode(_to_rgb(image)))

    @torch.no_grad()
    def lowres_masks(self, image) -> np.ndarray:
        """(side, side) step-4 k-means labels on the feature layer's token grid."""
        return self._lowres_masks(self._encode(_to_rgb(image)))

    @torch.no_grad()
    def inversion(self, image) -> Inversion:
        """Steps 5 and 7: the drawn x_t, the noise maps z_t, z₀ and the recorded q and k."""
        return self._invert(self._encode(_to_rgb(image)))

    @torch.no_grad()
    def trajectory(
        self, inversion: Inversion, modulation: torch.Tensor | None = None, injection: bool | None = None
    ) -> list[torch.Tensor]:
        """Step 6 from x_{t_m}: the latents visited, [x_{t_m}, …, x_1, final] (16 with the default grid).

        ``modulation``: (tokens,) added after the modulation layer's to_out[0] at t_m (c·M_i), or
        None for the un-nudged trajectory. ``injection`` defaults to ``attention_injection``.
        """
        config = self.config
        injection = config.attention_injection if injection is None else injection
        latent = inversion.samples[config.modulation_timestep]
        visited = [latent]
        self._state.recorded = inversion.recorded
        try:
            for t in self.timesteps():
                noise_prediction = self._predict(latent, t, "inject" if injection else "plain", modulation)
                # 6. x_p = μ_t(x, ε̂) + σ_t·z_t: this trajectory's ε̂, the image's shared z_t.
                latent = self._mean(latent, noise_prediction, t) + self._sigma(t) * inversion.noise_maps[t]
                visited.append(latent)
        finally:
            self._state.recorded = {}
        return visited

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(3, R, R) float32 image in about [-1, 1], not clamped (step 9)."""
        return self.vae.decode(latent / self.vae.config.scaling_factor).sample[0].float()

    def timesteps(self) -> list[int]:
        """The window: grid timesteps ≤ t_m, descending (281, 261, …, 1 with the defaults)."""
        return [t for t in self.grid if t <= self.config.modulation_timestep]

    def alpha_bar(self, timestep: int) -> float:
        """ᾱ_t; for t < 0 (the predecessor of the grid's last step) ᾱ_0, as set_alpha_to_one=False gives."""
        return _alpha_bar(self.alphas_cumprod, timestep)

    # -- steps 1 to 4 -------------------------------------------------------------------------

    def _empty_prompt(self) -> torch.Tensor:
        # 2. Text: "" padded to the tokenizer's length (77), last hidden state; no guidance.
        tokens = self.tokenizer(
            "", padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)
        with torch.no_grad():
            return self.text_encoder(tokens)[0].float()  # (1, 77, width)

    def _encode(self, picture: Image.Image) -> torch.Tensor:
        # 1. Input: Lanczos to R², [-1, 1], posterior mean times the scaling factor.
        side = self.config.resolution
        if picture.size != (side, side):
            picture = picture.resize((side, side), Image.LANCZOS)
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 127.5 - 1.0)  # (R, R, 3)
        pixels = pixels.permute(2, 0, 1)[None].to(self.device)  # (1, 3, R, R)
        return self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor  # (1, 4, R/8, R/8)

    def _features(self, latent: torch.Tensor) -> torch.Tensor:
        # 3. Feature pass: N full passes, one draw each from one generator, in order.
        config = self.config
        generator = _generator(config.seed)
        alpha = self.alpha_bar(config.feature_timestep)
        total = None
        for _ in range(config.feature_samples):
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(self.device)
            noisy = math.sqrt(alpha) * latent + math.sqrt(1.0 - alpha) * noise
            self._state.capture = config.feature_layer
            try:
                self._predict(noisy, config.feature_timestep, "plain")
                query = self._state.captured[0]  # (tokens, channels)
            finally:
                self._state.capture, self._state.captured = None, None
            total = query if total is None else total + query
        return total / config.feature_samples

    def _lowres_masks(self, latent: torch.Tensor) -> np.ndarray:
        # 4. Low-res masks: k-means on the raw feature vectors, on the token grid.
        config = self.config
        features = self._features(latent).cpu()  # (tokens, channels)
        side = _square_side(features.shape[0], config.feature_layer)
        if config.num_masks > features.shape[0]:
            raise ValueError(
                f"num_masks={config.num_masks} exceeds the {features.shape[0]} feature vectors of "
                f"{config.feature_layer!r} at resolution {config.resolution}; use at most {features.shape[0]}."
            )
        labels = _kmeans(
            features, config.num_masks, config.kmeans_iterations, config.kmeans_restarts, _generator(config.seed)
        )
        return labels.numpy().reshape(side, side)  # (side, side), row-major like the tokens

    # -- steps 5 to 11 ------------------------------------------------------------------------

    def _invert(self, latent: torch.Tensor) -> Inversion:
        # 5. Inversion: one fresh draw per window timestep, ascending (1, 21, …), from a second generator.
        window = self.timesteps()
        generator = _generator(self.config.seed)
        samples = {}
        for t in sorted(window):
            noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(self.device)
            alpha = self.alpha_bar(t)
            samples[t] = math.sqrt(alpha) * latent + math.sqrt(1.0 - alpha) * noise
        # 7. Reference run: its UNet inputs are the drawn x_t, so record q and k during these passes.
        self._state.recorded = {}
        noise_maps = {}
        for t in window:
            noise_prediction = self._predict(samples[t], t, "record")
            previous = latent if t - self._gap() < 0 else samples[t - self._gap()]
            noise_maps[t] = (previous - self._mean(samples[t], noise_prediction, t)) / self._sigma(t)
        recorded, self._state.recorded = self._state.recorded, {}
        return Inversion(latent=latent, samples=samples, noise_maps=noise_maps, recorded=recorded)

    def _labels(self, picture: Image.Image, latent: torch.Tensor, lowres: np.ndarray, num_masks: int) -> np.ndarray:
        # 11. Assignment: argmax over masks, ties to the lowest id (numpy returns the first maximum).
        maps = self._difference_maps(latent, lowres, num_masks)
        labels = np.argmax(maps.cpu().numpy(), axis=0)  # (R, R)
        return _resize_labels(labels, picture.height, picture.width)

    def _difference_maps(self, latent: torch.Tensor, lowres: np.ndarray, num_masks: int) -> torch.Tensor:
        config = self.config
        inversion = self._invert(latent)
        # The modulation layer's token grid, from what the reference run recorded there.
        query, _ = inversion.recorded[(config.modulation_layer, config.modulation_timestep)]
        side = _square_side(query.shape[1], config.modulation_layer)
        grid = lowres if lowres.shape == (side, side) else _resize_labels(lowres, side, side)
        maps = []
        for mask_id in range(num_masks):
            # 8. Modulated runs, one mask and one sign at a time: −λ first, then +λ.
            mask = _token_mask(grid, mask_id).to(self.device)  # (tokens,)
            images = []
            for strength in _signs(config.modulation_strength):
                final = self.trajectory(inversion, modulation=strength * mask)[-1]
                # 9. Decode, no clamping; 10. blur each image before the difference.
                images.append(self._blur(self.decode(final)))
            minus, plus = images
            # 10. d_i = ‖blur(I⁻) − blur(I⁺)‖₂ over RGB.
            maps.append(torch.sqrt(((minus - plus) ** 2).sum(dim=0)))  # (R, R)
        return torch.stack(maps)  # (K, R, R)

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        # 10. Normalised Gaussian as a full 2-D kernel, reflect padding, each channel alone.
        size, sigma = self.config.blur_kernel_size, self.config.blur_sigma
        if size == 1:
            return image
        offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
        kernel = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))  # (size, size)
        kernel = (kernel / kernel.sum()).float().to(image.device)
        padded = F.pad(image[None], (size // 2,) * 4, mode="reflect")  # (1, 3, R + size - 1, R + size - 1)
        channels = image.shape[0]
        return F.conv2d(padded, kernel.expand(channels, 1, size, size), groups=channels)[0]  # (3, R, R)

    # -- the sampler (step 5's formulas) ------------------------------------------------------

    def _predict(self, latent: torch.Tensor, t: int, mode: str, modulation: torch.Tensor | None = None) -> torch.Tensor:
        state = self._state
        state.mode, state.timestep = mode, t
        # c·M_i enters only at t_m (step 8).
        state.modulation = modulation if t == self.config.modulation_timestep else None
        state.modulation_layer = self.config.modulation_layer
        try:
            return self.unet(latent, t, encoder_hidden_states=self.prompt).sample
        finally:
            state.mode, state.timestep, state.modulation = "plain", None, None

    def _gap(self) -> int:
        return self.scheduler_config["num_train_timesteps"] // self.config.num_inference_steps

    def _sigma(self, t: int) -> float:
        alpha, previous = self.alpha_bar(t), self.alpha_bar(t - self._gap())
        # σ_t² = (1−ᾱ_p)/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_p)   (spec step 5, eta = 1)
        return math.sqrt((1.0 - previous) / (1.0 - alpha) * (1.0 - alpha / previous))

    def _mean(self, latent: torch.Tensor, noise_prediction: torch.Tensor, t: int) -> torch.Tensor:
        alpha, previous = self.alpha_bar(t), self.alpha_bar(t - self._gap())
        sigma = self._sigma(t)
        # x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t;  μ_t = √ᾱ_p·x̂₀ + √(1−ᾱ_p−σ_t²)·ε̂   (spec step 5)
        predicted_start = (latent - math.sqrt(1.0 - alpha) * noise_prediction) / math.sqrt(alpha)
        return math.sqrt(previous) * predicted_start + math.sqrt(1.0 - previous - sigma**2) * noise_prediction


# -- attention ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _AttentionState:
    mode: str = "plain"  # "plain" | "record" | "inject"
    timestep: int | None = None
    recorded: dict = dataclasses.field(default_factory=dict)
    modulation: torch.Tensor | None = None  # (tokens,), already c·M_i; None outside t_m
    modulation_layer: str | None = None
    capture: str | None = None  # layer whose to_q output the feature pass keeps
    captured: torch.Tensor | None = None


class _ExplicitAttention:
    """diffusers' attention body written out, with the reference's two deviations marked."""

    def __init__(self, name: str, state: _AttentionState):
        self.name, self.state = name, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if attention_mask is not None:
            raise ValueError(f"{self.name}: the reference has no attention masks (SD's UNet passes none).")
        state = self.state
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if state.mode == "inject":
            # Deviation 1 (step 8): q and k from the reference run at this layer and step.
            query, key = state.recorded[(self.name, state.timestep)]
        else:
            query, key = attn.to_q(hidden_states), attn.to_k(context)  # (1, tokens, width), (1, context, width)
            if state.mode == "record":
                state.recorded[(self.name, state.timestep)] = (query, key)
        if self.name == state.capture:
            state.captured = query
        value = attn.to_v(context)  # (1, context, width)
        heads = attn.heads
        attended = _attend(_split_heads(query, heads), _split_heads(key, heads), _split_heads(value, heads))
        batch, heads, tokens, head_dim = attended.shape
        merged = attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (1, tokens, width)
        output = attn.to_out[0](merged)
        if state.modulation is not None and self.name == state.modulation_layer:
            # Deviation 2 (step 8): + c·M_i after the projection, before dropout and the residual.
            output = output + state.modulation[None, :, None]
        return attn.to_out[1](output)


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    # softmax(q kᵀ / √d) v, per head; (1, heads, tokens, head_dim)
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])  # (1, heads, tokens, context)
    return torch.softmax(scores, dim=-1) @ value


def _split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, width = tensor.shape
    return tensor.reshape(batch, tokens, heads, width // heads).permute(0, 2, 1, 3)  # (batch, heads, tokens, head_dim)


def _attention_layers(unet) -> list[str]:
    names = [key.removesuffix(".processor") for key in unet.attn_processors]
    for name in names:
        attn = unet.get_submodule(name)
        unusual = [
            flag
            for flag, present in (
                ("group_norm", attn.group_norm is not None),
                ("spatial_norm", attn.spatial_norm is not None),
                ("norm_cross", bool(attn.norm_cross)),
                ("residual_connection", bool(attn.residual_connection)),
                ("rescale_output_factor", attn.rescale_output_factor != 1.0),
                ("norm_q", getattr(attn, "norm_q", None) is not None),
            )
            if present
        ]
        if unusual:
            raise ValueError(
                f"{name} uses {', '.join(unusual)}, which SD 1.x/2.x transformer attention does not; "
                "the reference implements only that attention."
            )
    return names


# -- schedule ----------------------------------------------------------------------------------


def _check_scheduler(config: dict) -> None:
    expected = {
        "beta_schedule": ("scaled_linear", "linear"),
        "timestep_spacing": ("leading",),
        "prediction_type": ("epsilon",),
        "set_alpha_to_one": (False,),
        "rescale_betas_zero_snr": (False,),
        "trained_betas": (None,),
    }
    # diffusers' DDIMScheduler defaults, for keys an SD folder's scheduler config leaves out.
    defaults = {"timestep_spacing": "leading", "prediction_type": "epsilon", "set_alpha_to_one": True,
                "rescale_betas_zero_snr": False, "trained_betas": None}
    for key, allowed in expected.items():
        value = config.get(key, defaults.get(key))
        if value not in allowed:
            raise ValueError(
                f"Scheduler config has {key}={value!r}; the spec's sampler needs {key} in {list(allowed)} "
                "(SD 1.x/2.x-base configs: scaled_linear betas, leading spacing, epsilon, set_alpha_to_one false)."
            )


def _alphas_cumprod(config: dict) -> torch.Tensor:
    # Computed as diffusers does (float32 linspace on the CPU), so ᾱ is bit-identical to the
    # scheduler's; on the CPU even under ``with torch.device("cuda")``, whose cumprod rounds differently.
    steps, start, end = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    if config["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float32, device="cpu") ** 2
    else:
        betas = torch.linspace(start, end, steps, dtype=torch.float32, device="cpu")
    return torch.cumprod(1.0 - betas, dim=0)


def _alpha_bar(alphas_cumprod: torch.Tensor, timestep: int) -> float:
    # The predecessor of the grid's last step is negative: set_alpha_to_one=False means ᾱ_0.
    return float(alphas_cumprod[max(timestep, 0)])


def _timestep_grid(config: dict, steps: int) -> list[int]:
    # "leading" spacing: 0, Δ, 2Δ, … plus steps_offset, descending (981, 961, …, 1 for SD at 50).
    gap = config["num_train_timesteps"] // steps
    offset = config.get("steps_offset", 0)
    return [step * gap + offset for step in reversed(range(steps))]


# -- validation --------------------------------------------------------------------------------


def _check_config(config: EmerDiffConfig, attention_layers: list[str], grid: list[int]) -> None:
    # What EmerDiffConfig cannot check on its own: the fields that depend on the model.
    for field in ("feature_layer", "modulation_layer"):
        name = getattr(config, field)
        if name not in attention_layers:
            raise ValueError(
                f"{field}={name!r} is not an attention layer of this UNet. Valid attention layers:\n  "
                + "\n  ".join(attention_layers)
            )
    if config.modulation_timestep not in grid:
        raise ValueError(
            f"modulation_timestep={config.modulation_timestep} is not on the {config.num_inference_steps}-step "
            f"grid {grid}; the trajectories start there, so pick one of those timesteps."
        )


def _check_lowres(lowres_labels) -> np.ndarray:
    lowres = np.asarray(lowres_labels)
    if lowres.ndim != 2 or not np.issubdtype(lowres.dtype, np.integer) or lowres.size == 0:
        raise ValueError(f"lowres_labels must be a non-empty 2-D integer array, got shape {lowres.shape} of {lowres.dtype}")
    if lowres.min() < 0:
        raise ValueError(f"lowres_labels must be ids >= 0, got a minimum of {lowres.min()}")
    return lowres.astype(np.int64)


def _square_side(tokens: int, layer: str) -> int:
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"{layer!r} has {tokens} tokens, not a square grid; the masks need one.")
    return side


# -- small pieces ------------------------------------------------------------------------------


def _generator(seed: int) -> torch.Generator:
    # Determinism conventions: every draw from a fresh CPU generator, then moved to the device.
    return torch.Generator("cpu").manual_seed(seed)


def _signs(strength: float) -> tuple[float, float]:
    # Step 8: −λ first, then +λ.
    return -strength, +strength


def _token_mask(grid: np.ndarray, mask_id: int) -> torch.Tensor:
    # Step 8: M_i flattened row-major, the attention tokens' order.
    return torch.from_numpy((grid.reshape(-1) == mask_id).astype(np.float32))  # (side * side,)


def _to_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(image).convert("RGB")
    raise TypeError(
        f"image must be a PIL image or a uint8 array (H, W), (H, W, 3) or (H, W, 4); got {type(image).__name__}"
        + (f" of shape {image.shape} and dtype {image.dtype}" if isinstance(image, np.ndarray) else "")
    )


def _resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    # Nearest neighbour on pixel centres: source floor((i + 0.5)·S/H), in integers ((2i+1)·S)//(2H).
    source_height, source_width = labels.shape
    rows = ((2 * np.arange(height) + 1) * source_height) // (2 * height)
    columns = ((2 * np.arange(width) + 1) * source_width) // (2 * width)
    return labels[rows[:, None], columns[None, :]]  # (height, width)


def _kmeans(points: torch.Tensor, clusters: int, iterations: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) labels of the restart with the lowest inertia (the first among equals)."""
    points = points.float()
    best_labels, best_inertia = None, math.inf
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, clusters, generator)
        previous = None
        for _ in range(iterations):
            labels = _nearest(points, centres)
            if previous is not None and torch.equal(labels, previous):
                break
            # An empty cluster keeps its centre rather than becoming NaN.
            centres = torch.stack([
                points[labels == j].mean(dim=0) if bool((labels == j).any()) else centres[j] for j in range(clusters)
            ])
            previous = labels
        inertia = float(((points - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def _kmeans_plus_plus(points: torch.Tensor, clusters: int, generator: torch.Generator) -> torch.Tensor:
    chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
    for _ in range(1, clusters):
        distances = ((points[:, None, :] - points[chosen][None, :, :]) ** 2).sum(dim=-1).amin(dim=1)  # (n,)
        if float(distances.sum()) == 0.0:  # fewer distinct points than clusters: any point will do
            chosen.append(int(torch.randint(points.shape[0], (1,), generator=generator)))
        else:
            chosen.append(int(torch.multinomial(distances / distances.sum(), 1, generator=generator)))
    return points[chosen].clone()  # (clusters, channels)


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(dim=-1)  # (n, clusters)
    return distances.argmin(dim=1)
