"""SegmentCLIP: a text-aligned embedding for every segment, and the text embeddings that name them.

The EmerDiff paper names its masks (Table 3) by averaging MaskCLIP's pixel embeddings inside each
mask and taking the nearest class name. docs/method.md, "Names for segments", gives the recipe;
the steps below carry its numbers.

    clip = SegmentCLIP.from_pretrained("openai/clip-vit-base-patch16")
    embeddings = clip.segment_embeddings(image, result.labels, result.num_masks)   # (K, D), unit rows
    vocabulary = Vocabulary.build(clip, ["cat", "sofa", "wall"])                  # emerdiff.naming
    classes, scores = vocabulary.assign(embeddings[result.segment_ids])
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from emerdiff.images import to_rgb
from emerdiff.loading import ClipParts, load_clip, resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"  # ViT-B/16: a 512-d joint space
DEFAULT_CLIP_RESOLUTION = 448  # a 28 x 28 patch grid for ViT-B/16
TEXT_BATCH = 256  # prompts per text-tower pass


class SegmentCLIP:
    def __init__(self, parts: ClipParts, resolution: int, device: torch.device, dtype: torch.dtype):
        patch = parts.model.config.vision_config.patch_size
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < patch or resolution % patch:
            raise ValueError(f"clip_resolution must be a positive multiple of the CLIP model's patch size ({patch}), "
                             f"got {resolution!r}")
        self.resolution = resolution
        self.grid = resolution // patch
        self.device, self.dtype = device, dtype
        self.model = parts.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = parts.tokenizer
        self._parts = parts
        self._mean = torch.tensor(parts.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(parts.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, source: str = DEFAULT_CLIP_MODEL, resolution: int = DEFAULT_CLIP_RESOLUTION,
                        device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                        allow_pickle: bool = False) -> SegmentCLIP:
        """Load a CLIP model; see ``emerdiff.loading.load_clip`` for ``source``.

        Device defaults to CUDA when present, else CPU; dtype to float16 on CUDA, float32 on CPU.
        Raises ModelLoadError (saying what to pass instead) and ValueError for a resolution that
        is not a multiple of the model's patch size.
        """
        device = resolve_device(device)
        return cls(load_clip(source, allow_pickle=allow_pickle), resolution, device, resolve_dtype(dtype, device))

    @functools.cached_property
    def info(self) -> dict:
        """What an output records about the embeddings: model, weights, resolution, dimension."""
        return {
            "clip_model": self._parts.source,
            "clip_weights_sha256": self._parts.weights_sha256,
            "clip_resolution": self.resolution,
            "clip_dim": int(self.model.config.projection_dim),
        }

    @property
    def logit_scale(self) -> float:
        """s of the naming softmax: exp of the model's learned logit scale (100 for OpenAI's CLIP)."""
        return float(self.model.logit_scale.float().exp())

    # -- images ----------------------------------------------------------------------------------

    def segment_embeddings(self, image, labels: np.ndarray, num_masks: int) -> np.ndarray:
        return self.segment_embeddings_batch([image], [labels], num_masks)[0]

    def segment_embeddings_batch(self, images: Sequence, label_maps: Sequence[np.ndarray], num_masks: int) -> list[np.ndarray]:
        """(K, D) float32 per image: each segment's mean patch embedding, L2-normalised; zero for ids without pixels.

        ``label_maps`` are the images' (H, W) label maps at their own size (ids 0..K-1).
        """
        pictures = [to_rgb(image) for image in images]
        for picture, labels in zip(pictures, label_maps):
            if labels.shape != (picture.height, picture.width):
                raise ValueError(f"a label map of shape {labels.shape} does not fit its {picture.width}x{picture.height} image")
        grids = self.dense_embeddings(pictures).cpu().numpy()
        return [pool_segments(grid, labels, num_masks) for grid, labels in zip(grids, label_maps)]

    @torch.inference_mode()
    def dense_embeddings(self, pictures: Sequence[Image.Image]) -> torch.Tensor:
        """(B, G, G, D) float32 MaskCLIP embeddings of the patch grid (steps 1-5)."""
        pixels = torch.cat([self._pixels(picture) for picture in pictures]).to(self.device, self.dtype)
        vision = self.model.vision_model
        # 2. Patches, class token, position embeddings interpolated to the G x G grid, pre-layernorm.
        hidden = vision.pre_layrnorm(vision.embeddings(pixels, interpolate_pos_encoding=True))  # (B, 1 + G*G, W)
        # 3. Every layer but the last, unchanged.
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            hidden = layer(hidden, attention_mask=None)
        # 4. The last layer's value path: no query or key, no token mixes with another.
        hidden = value_path(layers[-1], hidden)
        # 5. Post-layernorm and visual projection of the patch tokens (the class token is dropped).
        patches = self.model.visual_projection(vision.post_layernorm(hidden[:, 1:]))  # (B, G*G, D)
        return patches.float().view(len(pictures), self.grid, self.grid, -1)

    def _pixels(self, picture: Image.Image) -> torch.Tensor:
        # 1. Lanczos to the square, [0, 1], the model's mean and std.
        if picture.size != (self.resolution, self.resolution):
            picture = picture.resize((self.resolution, self.resolution), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        return (pixels - self._mean) / self._std  # (1, 3, R, R)

    # -- text ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(n, D) float32 unit-length embeddings of the prompts: the pooled end-of-text state, projected."""
        pieces = []
        for start in range(0, len(prompts), TEXT_BATCH):
            tokens = self.tokenizer(list(prompts[start:start + TEXT_BATCH]), padding="max_length", truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt").to(self.device)
            output = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            pieces.append(output.pooler_output.float())
        return torch.nn.functional.normalize(torch.cat(pieces), dim=-1)


def value_path(layer: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's last layer (step 4): y = x + out_proj(v_proj(ln1(x))); y + mlp(ln2(y)), token by token."""
    attention = layer.self_attn
    hidden = hidden + attention.out_proj(attention.v_proj(layer.layer_norm1(hidden)))
    return hidden + layer.mlp(layer.layer_norm2(hidden))


def pool_segments(grid: np.ndarray, labels: np.ndarray, num_masks: int) -> np.ndarray:
    """(K, D) float32: per segment, the mean of its pixels' cell embeddings, L2-normalised (step 6).

    Pixel (y, x) of an H x W map lies in cell (floor((y + 1/2) G / H), floor((x + 1/2) G / W)), so
    each cell counts by the number of the segment's pixels in it. Rows of ids without pixels are zero.
    """
    if labels.size and (labels.min() < 0 or labels.max() >= num_masks):
        raise ValueError(f"label ids must lie in 0..{num_masks - 1}, got {labels.min()}..{labels.max()}")
    side = grid.shape[0]
    height, width = labels.shape
    rows = ((2 * np.arange(height) + 1) * side) // (2 * height)  # exact integer form of the floor above
    cols = ((2 * np.arange(width) + 1) * side) // (2 * width)
    cells = (rows[:, None] * side + cols[None, :]).ravel()
    counts = np.bincount(labels.ravel().astype(np.int64) * side * side + cells, minlength=num_masks * side * side)
    sums = counts.reshape(num_masks, side * side).astype(np.float64) @ grid.reshape(side * side, -1).astype(np.float64)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)
