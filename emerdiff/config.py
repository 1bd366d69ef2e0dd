"""EmerDiffConfig: every knob of the method in one frozen, validated, serialisable object.

Defaults are the authors' own settings (docs/method.md); each field's ``help`` metadata is what the
command line shows, so the CLIs build their flags from this class instead of listing them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args

Replay = Literal["auto", "query_key", "probabilities"]
Compile = Literal["none", "vae", "unet", "unet+vae"]
Sampler = Literal["ddpm_inversion"]
DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"  # the authors' notebook
FEATURE_LAYER = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
MODULATION_LAYER = "up_blocks.1.attentions.2.transformer_blocks.0.attn2"


def _field(default: Any, help: str, *, hashed: bool = True) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "hashed": hashed})


@dataclasses.dataclass(frozen=True)
class EmerDiffConfig:
    num_masks: int = _field(25, "K, the number of low-resolution k-means masks (paper: 10-40 all work about the same).")
    resolution: int = _field(512, "Side of the square the image is Lanczos-resized to before encoding (multiple of 64).")
    feature_samples: int = _field(100, "N, the noisy UNet passes whose feature-layer queries are averaged before clustering.")
    feature_timestep: int = _field(0, "Timestep t_f of the feature passes.")
    feature_layer: str = _field(FEATURE_LAYER, "diffusers module path of the attention layer whose to_q output is clustered.")
    kmeans_restarts: int = _field(100, "k-means++ restarts; the one with the lowest inertia is kept.")
    kmeans_iterations: int = _field(100, "Maximum Lloyd iterations per restart (each stops earlier once its assignments settle).")
    sampler: Sampler = _field("ddpm_inversion", "How the trajectories reconstruct the image: edit-friendly DDPM inversion (eta 1), the authors' choice.")
    num_inference_steps: int = _field(50, "Steps of the sampler's grid over the 1000-step schedule; with 50, t_m = 281 leaves a 15-step window.")
    modulation_timestep: int = _field(281, "Timestep t_m where the trajectories start and the modulation is applied; must lie on the grid.")
    modulation_layer: str = _field(MODULATION_LAYER, "diffusers module path of the cross-attention layer whose output is modulated.")
    modulation_strength: float = _field(10.0, "Lambda: the value added to (+) and subtracted from (-) the layer output inside a mask.")
    attention_injection: bool = _field(True, "Replace every attention layer's query and key in the modulated runs by the reference run's.")
    blur_kernel_size: int = _field(3, "Side of the Gaussian kernel applied to each decoded image before the difference norm (odd; 1 disables it).")
    blur_sigma: float = _field(0.8, "Standard deviation of that Gaussian, in pixels at the working resolution.")
    seed: int = _field(0, "Seed of every random draw (feature noise, inversion noise, k-means); an image's result depends only on it.")
    attention_replay: Replay = _field(
        "auto",
        "What the reference run stores for self-attention injection: 'query_key' (least memory), "
        "'probabilities' (half the attention work, N^2 memory per head) or 'auto' (probabilities where "
        "they fit). Does not change results.",
        hashed=False,
    )
    chunk_size: int | None = _field(
        None,
        "Modulated trajectories per UNet batch (even). Unset: chosen from free device memory. Does not change results.",
        hashed=False,
    )
    channels_last: bool = _field(
        False,
        "Keep the UNet in channels-last (NHWC) memory format, the layout cuDNN's fastest convolutions use "
        "(the VAE stays in the default one: on CUDA its GroupNorms would copy gigabytes back). Off by default: "
        "its speed-up is not yet measured on a GPU. Does not change results.",
        hashed=False,
    )
    torch_compile: Compile = _field(
        "none",
        "torch.compile: 'unet' its transformer blocks one by one (diffusers' regional compilation), "
        "EmerDiff's attention layers left uncompiled; 'vae' the VAE decoder; 'unet+vae' both. Each process "
        "compiles for minutes on its first images. Off by default: its speed-up is not yet measured on a GPU. "
        "Does not change results.",
        hashed=False,
    )

    tf32: bool = _field(
        True,
        "On CUDA, run float32 convolutions (the VAE, the blur; the UNet too when it runs in float32) on TF32 "
        "tensor cores: products rounded to 10 mantissa bits, sums in float32, decodes about 4x faster than "
        "false (true float32). Matrix multiplies stay true float32 either way; no effect on a CPU. Changes "
        "labels only where two masks nearly tie (docs/method.md, 'Precision').",
        hashed=False,
    )

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("Invalid EmerDiffConfig: " + "; ".join(problems))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EmerDiffConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown EmerDiffConfig field(s) {unknown}; valid fields are {sorted(names)}.")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> EmerDiffConfig:
        """Read a JSON or YAML file holding (some of) the fields; the rest keep their defaults."""
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"Config file {path} must hold a mapping of field names to values, got {type(values).__name__}.")
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> EmerDiffConfig:
        return dataclasses.replace(self, **changes)

    @property
    def config_hash(self) -> str:
        """Stable hash of every field that changes results (execution-only fields such as chunk_size excluded)."""
        hashed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["hashed"]}
        canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def positive_int_problem(name: str, value: Any) -> str | None:
    """The complaint about ``value`` unless it is an integer >= 1 (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"{name} must be a positive integer, got {value!r}"
    return None


def non_negative_int_problem(name: str, value: Any) -> str | None:
    """The complaint about ``value`` unless it is an integer >= 0 (booleans are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return f"{name} must be a non-negative integer, got {value!r}"
    return None


def _problems(config: EmerDiffConfig):
    for name in ("num_masks", "resolution", "feature_samples", "kmeans_restarts", "kmeans_iterations",
                 "num_inference_steps", "blur_kernel_size"):
        if problem := positive_int_problem(name, getattr(config, name)):
            yield problem
    if isinstance(config.resolution, int) and config.resolution % 64:
        yield f"resolution must be a multiple of 64 (the UNet downsamples the latent 3 times), got {config.resolution}"
    for name in ("feature_timestep", "modulation_timestep"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 999:
            yield f"{name} must be an integer timestep in 0..999, got {value!r}"
    if isinstance(config.blur_kernel_size, int) and config.blur_kernel_size % 2 == 0:
        yield f"blur_kernel_size must be odd so the blur is centred, got {config.blur_kernel_size}"
    if not isinstance(config.blur_sigma, (int, float)) or config.blur_sigma <= 0:
        yield f"blur_sigma must be > 0, got {config.blur_sigma!r}"
    if not isinstance(config.modulation_strength, (int, float)) or isinstance(config.modulation_strength, bool):
        yield f"modulation_strength must be a number, got {config.modulation_strength!r}"
    if not isinstance(config.attention_injection, bool):
        yield f"attention_injection must be true or false, got {config.attention_injection!r}"
    if problem := non_negative_int_problem("seed", config.seed):
        yield problem
    for name in ("feature_layer", "modulation_layer"):
        if not isinstance(getattr(config, name), str) or not getattr(config, name):
            yield f"{name} must be a diffusers module path such as {MODULATION_LAYER!r}"
    if config.sampler not in get_args(Sampler):
        yield f"sampler must be one of {list(get_args(Sampler))}, got {config.sampler!r}"
    replay_choices = get_args(Replay)
    if config.attention_replay not in replay_choices:
        yield f"attention_replay must be one of {list(replay_choices)}, got {config.attention_replay!r}"
    for name in ("channels_last", "tf32"):
        if not isinstance(getattr(config, name), bool):
            yield f"{name} must be true or false, got {getattr(config, name)!r}"
    compile_choices = get_args(Compile)
    if config.torch_compile not in compile_choices:
        yield f"torch_compile must be one of {list(compile_choices)}, got {config.torch_compile!r}"
    chunk = config.chunk_size
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 2 or chunk % 2):
        yield f"chunk_size must be an even integer >= 2 (a +lambda/-lambda pair at least) or unset, got {chunk!r}"
