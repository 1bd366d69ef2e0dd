"""Models from a Hub id, a local folder or a single-file checkpoint: Stable Diffusion's parts, and
the CLIP model that names segments.

Only the four parts the method needs are loaded (no safety checker, no feature extractor), and
only safetensors weights unless the caller opts in to pickle, which can run code when loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# CLIP's own image normalisation (OpenAI), for model folders without a preprocessor config.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to pass instead."""


def weights_sha256(parts: dict[str, torch.nn.Module]) -> str:
    """Hash of the weights as loaded (names, dtypes and bytes) of the named modules, in name order."""
    digest = hashlib.sha256()
    for part, module in sorted(parts.items()):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return digest.hexdigest()


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
        return weights_sha256({"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder})


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
    _refuse_url(source, "diffusers folder", "--model")
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
    if not _is_hub_id(source):
        raise ModelLoadError(
            f"Model {source!r} is neither an existing file or folder nor a Hub id of the form 'owner/name'. "
            "Pass a diffusers folder (with unet/, vae/, text_encoder/, tokenizer/, scheduler/), a .safetensors "
            "checkpoint, a Hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5', or 'tiny'."
        )
    return _load_folder(source, source, dtype, allow_pickle)


def _refuse_url(source: str, what: str, flag: str) -> None:
    # The library reads local files only; the commands fetch a URL's folder once per machine.
    if "://" in source:
        raise ModelLoadError(
            f"{source!r} is a URL. Copy the {what} to local disk first (pipeline.models.local_model_source does, "
            f"once per machine), or pass the URL as {flag} to the `emerdiff` commands, which do it for you."
        )


def _is_hub_id(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") == 1


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
        raise ModelLoadError(_load_advice(
            "Stable Diffusion", source, error, allow_pickle,
            "Pass a local diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), a .safetensors "
            "single-file checkpoint, or a Hub id this machine can reach (HF_HUB_OFFLINE must be unset and the "
            "model accepted on the Hub); `--model tiny` runs a random model as a plumbing check.")) from error


def _load_advice(what: str, source: str, error: Exception, allow_pickle: bool, pass_instead: str) -> str:
    """Why ``source`` did not load, what to pass instead, and the --allow-pickle hint when it applies."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    advice = f"Could not load {what} from {source!r}: {text}\n{pass_instead}"
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


# -- CLIP -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ClipParts:
    model: Any  # transformers CLIPModel, float32 as stored
    tokenizer: Any
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    source: str
    weights_sha256: str  # of the float32 weights, so every device and dtype records the same hash


def load_clip(source: str, allow_pickle: bool = False) -> ClipParts:
    """A CLIP model (``transformers`` CLIPModel and tokenizer) and its image normalisation.

    ``source``: a Hub id (``openai/clip-vit-base-patch16``), a local ``transformers`` folder, or
    ``"tiny"`` (a random tiny CLIP for plumbing checks). Loaded in float32 and hashed as stored,
    before any cast. Raises ModelLoadError saying what to pass instead.
    """
    if source == "tiny":
        from emerdiff.tiny import tiny_clip_dir

        logger.warning("Using the tiny random CLIP: a plumbing check, its names mean nothing.")
        return _load_clip_folder(str(tiny_clip_dir()), "tiny", allow_pickle)
    _refuse_url(source, "CLIP folder", "--clip-model")
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{source!r} is not a transformers model folder: it has no config.json "
                                 "(save one with CLIPModel.save_pretrained and the tokenizer's save_pretrained)")
        return _load_clip_folder(str(path), source, allow_pickle)
    if not _is_hub_id(source):
        raise ModelLoadError(
            f"CLIP model {source!r} is neither an existing folder nor a Hub id of the form 'owner/name'. Pass a "
            "transformers CLIP folder, a Hub id such as 'openai/clip-vit-base-patch16', or 'tiny'."
        )
    return _load_clip_folder(source, source, allow_pickle)


def _load_clip_folder(location: str, source: str, allow_pickle: bool) -> ClipParts:
    from transformers import AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(location, dtype=torch.float32, use_safetensors=None if allow_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(location)
        mean, std = _clip_normalisation(location)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ModelLoadError(_load_advice(
            "CLIP", source, error, allow_pickle,
            "Pass a local transformers CLIP folder (config.json, weights, tokenizer files), a Hub id this machine "
            "can reach (HF_HUB_OFFLINE must be unset), or 'tiny' for a random plumbing check.")) from error
    return ClipParts(model=model.eval(), tokenizer=tokenizer, image_mean=mean, image_std=std, source=source,
                     weights_sha256=weights_sha256({"clip": model}))


def _clip_normalisation(location: str) -> tuple[tuple, tuple]:
    """The model's image mean and std: its preprocessor config when it has one, else OpenAI's (spec step 1)."""
    config = _preprocessor_config(location)
    if config is None:
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return tuple(config.get("image_mean", OPENAI_CLIP_MEAN)), tuple(config.get("image_std", OPENAI_CLIP_STD))


def _preprocessor_config(location: str) -> dict | None:
    path = Path(location)
    if path.is_dir():
        file = path / PREPROCESSOR_FILE
        return json.loads(file.read_text()) if file.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(location, PREPROCESSOR_FILE)).read_text())
    except EntryNotFoundError:
        return None
