"""Random-weight models with SD 1.x's layout at benchmark sizes: "mid" (CPU timings) and "sd15" (SD 1.x's real shapes),
and CLIP models for naming segments: "tiny" and "vitb16" (openai/clip-vit-base-patch16's shapes).

Their masks and names mean nothing; they measure cost. ``tiny`` is the tests' model (emerdiff/tiny.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from emerdiff.loading import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ClipParts, StableDiffusionParts
from emerdiff.tiny import TINY_CLIP_SIZES, TINY_SIZES, random_modules, save_model, scheduler_config

SHAPES = {
    "tiny": TINY_SIZES,
    "mid": {
        "unet": {"block_out_channels": (64, 128, 256, 256), "layers_per_block": 2, "cross_attention_dim": 256,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (32, 64, 128, 128), "layers_per_block": 2, "norm_num_groups": 32},
        "text": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4},
    },
    # SD 1.4/1.5's exact architecture (860M-parameter UNet, 84M VAE, CLIP ViT-L/14 text encoder).
    "sd15": {
        "unet": {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "cross_attention_dim": 768,
                 "attention_head_dim": 8, "norm_num_groups": 32},
        "vae": {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32},
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    },
}


def _sizes(shape: str) -> dict:
    if shape not in SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; choose one of {sorted(SHAPES)}")
    return SHAPES[shape]


def random_parts(shape: str = "mid", seed: int = 0, directory: str | Path | None = None) -> StableDiffusionParts:
    """A random model of a named shape, as the parts the segmenter is built from (no disk round trip).

    Modules land on torch's current default device (``with torch.device("meta")`` for FLOP
    counting). The tokenizer goes to ``directory`` or a temporary folder.
    """
    folder = Path(directory or tempfile.mkdtemp(prefix="emerdiff-tokenizer-"))
    modules = random_modules(_sizes(shape), seed, folder / "tokenizer")
    return StableDiffusionParts(**modules, scheduler_config=scheduler_config(), source=f"random-{shape}")


def save_random_model(shape: str, directory: str | Path, seed: int = 0) -> Path:
    """Write a random model of a named shape to ``directory`` in diffusers' folder format."""
    return save_model(directory, _sizes(shape), seed)


CLIP_SHAPES = {
    "tiny": TINY_CLIP_SIZES,
    # openai/clip-vit-base-patch16: ViT-B/16 trained at 224 px, a 512-d joint space.
    "vitb16": {
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                   "image_size": 224, "patch_size": 16},
        "text": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8,
                 "vocab_size": 49408},
        "projection_dim": 512,
    },
}


def random_clip(shape: str = "vitb16", seed: int = 0) -> ClipParts:
    """A random CLIP of a named shape, as the parts SegmentCLIP is built from (images only: no tokenizer).

    Lands on torch's current default device, like ``random_parts``.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    if shape not in CLIP_SHAPES:
        raise ValueError(f"unknown CLIP shape {shape!r}; choose one of {sorted(CLIP_SHAPES)}")
    sizes = CLIP_SHAPES[shape]
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=sizes["text"], vision_config=sizes["vision"],
                                 projection_dim=sizes["projection_dim"])).eval()
    return ClipParts(model=model, tokenizer=None, image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD,
                     source=f"random-{shape}", weights_sha256=f"random-{shape}")
