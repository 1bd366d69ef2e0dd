"""Stable Diffusion's parts from a Hub id, a local diffusers folder or a single-file checkpoint.

Only the four parts the method needs are loaded (no safety checker, no feature extractor), and
only safetensors weights unless the caller opts in to pickle, which can run code when loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


@dataclasses.dataclass
class StableDiffusionParts:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict
    source: str

    def weights_sha256(self) -> str:
        """Hash of the weights as loaded (names, dtypes and bytes), whatever the source was."""
        digest = hashlib.sha256()
        for part in ("unet", "vae", "text_encoder"):
            for name, tensor in sorted(getattr(self, part).state_dict().items()):
                digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().contiguous().view(torch.uint8).cpu().numpy().tobytes())
        return digest.hexdigest()


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        # fp16 keeps more mantissa than bf16 and SD 1.x/2.x run safely in it; CPUs lack fast fp16.
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def load_parts(source: str, dtype: torch.dtype, allow_pickle: bool = False) -> StableDiffusionParts:
    """Load UNet, VAE, text encoder, tokenizer and scheduler config from ``source``.

    ``source``: a Hub id, a local diffusers folder, a single-file ``.safetensors`` checkpoint,
    or ``"tiny"`` (a random tiny model for plumbing checks). Raises ModelLoadError.
    """
    if source == "tiny":
        from emerdiff.tiny import tiny_model_dir

        logger.warning("Using the tiny random model: a plumbing check, its masks mean nothing.")
        return _load_folder(str(tiny_model_dir()), "tiny", dtype, allow_pickle)
    if "://" in source:
        raise ModelLoadError(
            f"{source!r} is a URL. Copy the diffusers folder to local disk first, or let the command do it: "
            "`emerdiff label --model URL` (once per node) and `emerdiff segment --model URL` copy it into the model "
            "cache (pipeline.models.local_model_source)."
        )
    path = Path(source).expanduser()
    if path.is_file():
        return _load_single_file(path, dtype, allow_pickle)
    if path.is_dir():
        missing = [part for part in FOLDER_PARTS if not (path / part).is_dir()]
        if missing:
            raise ModelLoadError(
                f"{source!r} is not a complete diffusers folder: it lacks {', '.join(p + '/' for p in missing)}. "
                f"A Stable Diffusion folder has {', '.join(p + '/' for p in FOLDER_PARTS)} (as saved by "
                "StableDiffusionPipeline.save_pretrained); for a single .safetensors checkpoint pass the file itself."
            )
        return _load_folder(str(path), source, dtype, allow_pickle)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(
            f"Model {source!r} is neither an existing file or folder nor a Hub id of the form 'owner/name'. "
            "Pass a diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, scheduler/), a .safetensors "
            "checkpoint, a Hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', or 'tiny'."
        )
    return _load_folder(source, source, dtype, allow_pickle)


def _load_folder(location: str, source: str, dtype: torch.dtype, allow_pickle: bool) -> StableDiffusionParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    weights = {"use_safetensors": None if allow_pickle else True}
    try:
        return StableDiffusionParts(
            unet=UNet2DConditionModel.from_pretrained(location, subfolder="unet", torch_dtype=dtype, **weights),
            # The VAE always runs in float32 (EmerDiffSegmenter): load it so, whatever ``dtype`` is.
            vae=AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=torch.float32, **weights),
            text_encoder=CLIPTextModel.from_pretrained(location, subfolder="text_encoder", dtype=dtype, **weights),
            tokenizer=CLIPTokenizer.from_pretrained(location, subfolder="tokenizer"),
            scheduler_config=dict(DDIMScheduler.load_config(location, subfolder="scheduler")),
            source=source,
        )
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelLoadError(_folder_advice(source, error, allow_pickle)) from error


def _folder_advice(source: str, error: Exception, allow_pickle: bool) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    advice = (
        f"Could not load Stable Diffusion from {source!r}: {text}\n"
        "Pass a local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), a .safetensors "
        "single-file checkpoint, or a Hub id this machine can reach (HF_HUB_OFFLINE must be unset and the "
        "model accepted on the Hub); `--model tiny` runs a random model as a plumbing check."
    )
    if not allow_pickle and "safetensors" in str(error).lower():
        advice += (
            "\nThis model seems to ship only pickle weights (.bin/.ckpt), which can run code when loaded; "
            "convert them to safetensors or, for a file you trust, pass allow_pickle=True (--allow-pickle)."
        )
    return advice


def _load_single_file(path: Path, dtype: torch.dtype, allow_pickle: bool) -> StableDiffusionParts:
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle checkpoint, which can run arbitrary code when loaded. Convert it to "
            ".safetensors, or pass allow_pickle=True (--allow-pickle) if you trust its origin."
        )
    if path.suffix.lower() not in PICKLE_SUFFIXES + (".safetensors",):
        raise ModelLoadError(f"{path} is not a checkpoint this tool reads: expected a .safetensors file or a diffusers folder.")
    from diffusers import StableDiffusionPipeline

    try:
        pipeline = StableDiffusionPipeline.from_single_file(
            str(path), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError, EnvironmentError, KeyError) as error:
        raise ModelLoadError(
            f"Could not load the single-file checkpoint {path}: {str(error).splitlines()[0]}\n"
            "diffusers needs the matching model configuration, which it fetches from the Hub; offline, "
            "convert the checkpoint to a diffusers folder once on a machine with access and pass that folder."
        ) from error
    return StableDiffusionParts(
        unet=pipeline.unet,
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        scheduler_config=dict(pipeline.scheduler.config),
        source=str(path),
    )
