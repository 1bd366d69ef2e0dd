"""A tiny randomly initialised model with Stable Diffusion's layout, built offline.

It has SD 1.x's four-level UNet with two layers per block (so the default feature and modulation
layers, ``up_blocks.1.attentions.{0,2}.transformer_blocks.0.attn2``, exist and sit at latent/4),
an 8x VAE, a CLIP text encoder and a real CLIP BPE tokenizer with a byte-level vocabulary. It is saved in diffusers' folder format, so loading it exercises the same
``from_pretrained`` path as real weights. Its masks mean nothing: it is for tests and plumbing
checks (``--model tiny``), never for labels.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

TINY_RESOLUTION = 128  # latent 16x16, so the 16x16-equivalent layer is a 4x4 grid


def _byte_vocabulary() -> dict[str, int]:
    # CLIP's byte-level BPE alphabet: every byte as a printable character, alone and as a
    # word end ("</w>"); no merges, so any text tokenizes, just into many tokens.
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def _save_tokenizer(directory: Path) -> int:
    from transformers import CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = _byte_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocabulary, merges=[], model_max_length=77)
    tokenizer.save_pretrained(str(directory))
    return len(vocabulary)


def scheduler_config() -> dict:
    """SD 1.x's scheduler configuration, as its model folders ship it."""
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }


# The tests' model. Other sizes with the same layout (benchmarks/models.py) pass their own.
TINY_SIZES = {
    "unet": {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 2, "cross_attention_dim": 32,
             "attention_head_dim": 2, "norm_num_groups": 8},
    "vae": {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8},
    "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
}


def random_modules(sizes: dict, seed: int, tokenizer_dir: Path) -> dict:
    """Randomly initialised unet, vae, text_encoder and tokenizer of SD 1.x's layout at ``sizes``.

    The modules are created on torch's current default device (``with torch.device("meta")``
    gives weightless models for FLOP counting); the tokenizer is saved to ``tokenizer_dir``.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab_size = _save_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        **sizes["unet"],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        **sizes["vae"],
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            **sizes["text"],
        )
    )
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
    }


def save_model(directory: str | Path, sizes: dict, seed: int = 0) -> Path:
    """Write a random SD-layout model of ``sizes`` to ``directory`` (diffusers format) and return its path."""
    from diffusers import DDIMScheduler

    directory = Path(directory)
    modules = random_modules(sizes, seed, directory / "tokenizer")
    for part in ("unet", "vae", "text_encoder"):
        modules[part].save_pretrained(directory / part)
    DDIMScheduler.from_config(scheduler_config()).save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }, indent=2))
    return directory


def build_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny random SD-layout model to ``directory`` (diffusers format) and return its path."""
    return save_model(directory, TINY_SIZES, seed)


def tiny_model_dir() -> Path:
    """The tiny model in a per-user cache folder, built once (atomically, so concurrent callers agree)."""
    return _cached("tiny-v2", build_tiny_model)


def _cached(name: str, build) -> Path:
    """``build(folder)``'s folder under the per-user cache, built once: in a staging folder renamed into place."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emerdiff" / name
    if cache.is_dir():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{name}-"))
    build(staging)
    try:
        staging.rename(cache)
    except OSError:  # another process finished first; its copy is identical
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return cache


# -- a tiny CLIP, for naming segments (emerdiff.clip) ------------------------------------------------

TINY_CLIP_RESOLUTION = 64  # an 8x8 patch grid, next to the tiny SD's 128 px
TINY_CLIP_SIZES = {
    "vision": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
               "image_size": 32, "patch_size": 8},
    "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
    "projection_dim": 16,
}


def build_tiny_clip(directory: str | Path, seed: int = 0, sizes: dict = TINY_CLIP_SIZES) -> Path:
    """Write a random CLIP (transformers folder, CLIP's byte-level tokenizer) to ``directory``.

    Its token embeddings have unit variance, and the end-of-text token's is zero: the text tower
    pools that token's state, so otherwise the one token every prompt shares would outweigh the
    words, and every class name would embed alike (at CLIP's default std of 0.02, all the more).
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    directory = Path(directory)
    vocab_size = _save_tokenizer(directory)
    text = {"vocab_size": vocab_size, "max_position_embeddings": 77, "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1, **sizes["text"]}
    config = CLIPConfig(text_config=text, vision_config=sizes["vision"], projection_dim=sizes["projection_dim"],
                        logit_scale_init_value=4.6052)  # exp() = 100, OpenAI CLIP's trained scale
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        tokens = model.text_model.embeddings.token_embedding.weight
        tokens.normal_(0.0, 1.0)
        tokens[text["eos_token_id"]] = 0.0
    model.save_pretrained(directory)
    return directory


def tiny_clip_dir() -> Path:
    """The tiny CLIP in the per-user cache folder, built once (atomically, like ``tiny_model_dir``)."""
    return _cached("tiny-clip-v1", build_tiny_clip)
