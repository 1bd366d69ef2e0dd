"""Tiny (and other) randomly initialised models with Stable Diffusion's layout, built offline.

It has SD 1.x's four-level UNet (so ``up_blocks.1.attentions.0.transformer_blocks.0.attn2``
exists and sits at latent/4), an 8x VAE, a CLIP text encoder and a real CLIP BPE tokenizer with a
byte-level vocabulary. It is saved in diffusers' folder format, so loading it exercises the same
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


def _scheduler_config() -> dict:
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


# Random models with SD 1.x's block layout. "tiny" is the tests' model; "mid" and "sd15" (SD 1.5's
# real architecture) are for benchmarks and FLOP counts.
SHAPES = {
    "tiny": {
        "unet": {"block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "cross_attention_dim": 32,
                 "attention_head_dim": 2, "norm_num_groups": 8},
        "vae": {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "norm_num_groups": 8},
        "text": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "mid": {
        "unet": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "cross_attention_dim": 256,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (32, 64, 128, 128), "layers_per_block": 2, "norm_num_groups": 32},
        "text": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
    },
    "sd15": {
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    },
}


def random_parts(shape: str = "tiny", seed: int = 0, directory: str | Path | None = None):
    """A randomly initialised model of a named shape, as the parts the segmenter is built from.

    The modules are created on torch's current default device (``with torch.device("meta")``
    gives weightless models for FLOP counting). A temporary tokenizer folder is used unless
    ``directory`` is given.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from emerdiff.loading import StableDiffusionParts

    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {sorted(SHAPES)}")
    sizes = SHAPES[shape]
    tokenizer_dir = Path(directory or tempfile.mkdtemp(prefix="emerdiff-tokenizer-")) / "tokenizer"
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
    return StableDiffusionParts(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(tokenizer_dir)),
        scheduler_config=_scheduler_config(),
        source=f"random-{shape}",
    )


def build_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    """Write the tiny random SD-layout model to ``directory`` (diffusers format) and return its path."""
    from diffusers import DDIMScheduler

    directory = Path(directory)
    parts = random_parts("tiny", seed, directory)
    parts.unet.save_pretrained(directory / "unet")
    parts.vae.save_pretrained(directory / "vae")
    parts.text_encoder.save_pretrained(directory / "text_encoder")
    DDIMScheduler.from_config(_scheduler_config()).save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }, indent=2))
    return directory


def tiny_model_dir() -> Path:
    """The tiny model in a per-user cache folder, built once (atomically, so concurrent callers agree)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emerdiff" / "tiny-v1"
    if (cache / "model_index.json").exists():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tiny-"))
    build_tiny_model(staging)
    try:
        staging.rename(cache)
    except OSError:  # another process finished first; its copy is identical
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return cache
