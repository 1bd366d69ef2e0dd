"""A second, slow MaskCLIP embedding written from the recipe (docs/method.md, "Names for segments").

Explicit per-token arithmetic on the model's weights, in float64: no layer module of transformers
is called and none of emerdiff.clip's code is shared, so agreeing with the fast path means both
follow the recipe.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def weights(module) -> dict[str, np.ndarray]:
    return {name: tensor.detach().double().numpy() for name, tensor in module.state_dict().items()}


def layer_norm(x: np.ndarray, w: dict, prefix: str, eps: float) -> np.ndarray:
    mean = x.mean()
    variance = ((x - mean) ** 2).mean()
    return (x - mean) / math.sqrt(variance + eps) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]


def linear(x: np.ndarray, w: dict, prefix: str) -> np.ndarray:
    out = w[f"{prefix}.weight"] @ x
    return out + w[f"{prefix}.bias"] if f"{prefix}.bias" in w else out


def activation(x: np.ndarray, name: str) -> np.ndarray:
    if name == "quick_gelu":
        return x / (1.0 + np.exp(-1.702 * x))
    if name == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    raise NotImplementedError(name)


def pixels(picture: Image.Image, resolution: int, mean, std) -> np.ndarray:
    """Step 1: (3, R, R) float64."""
    resized = picture.convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS)
    values = np.asarray(resized, dtype=np.float64) / 255.0
    return ((values - np.array(mean)) / np.array(std)).transpose(2, 0, 1)


def dense(model, picture: Image.Image, resolution: int, mean, std) -> np.ndarray:
    """(G, G, D) MaskCLIP embeddings of the patch grid, token by token."""
    config = model.config.vision_config
    w = weights(model.vision_model)
    projection = model.visual_projection.weight.detach().double().numpy()
    patch, width, eps = config.patch_size, config.hidden_size, config.layer_norm_eps
    heads = config.num_attention_heads
    grid = resolution // patch
    image = pixels(picture, resolution, mean, std)

    # 2. Patch embedding (a dot product per patch), class token, position embeddings, pre-layernorm.
    kernel = w["embeddings.patch_embedding.weight"].reshape(width, -1)
    tokens = [w["embeddings.class_embedding"]]
    for gy in range(grid):
        for gx in range(grid):
            tokens.append(kernel @ image[:, gy * patch:(gy + 1) * patch, gx * patch:(gx + 1) * patch].reshape(-1))
    trained = w["embeddings.position_embedding.weight"]
    side = int(round(math.sqrt(trained.shape[0] - 1)))
    patch_positions = torch.nn.functional.interpolate(
        torch.from_numpy(trained[1:].reshape(side, side, width).transpose(2, 0, 1))[None],
        size=(grid, grid), mode="bicubic", align_corners=False)[0].numpy().transpose(1, 2, 0).reshape(-1, width)
    positions = np.concatenate([trained[:1], patch_positions])
    x = [layer_norm(token + position, w, "pre_layrnorm", eps) for token, position in zip(tokens, positions)]

    # 3. Every layer but the last: full self-attention over all tokens.
    layers = config.num_hidden_layers
    for index in range(layers - 1):
        prefix = f"encoder.layers.{index}"
        normed = [layer_norm(t, w, f"{prefix}.layer_norm1", eps) for t in x]
        queries = [linear(t, w, f"{prefix}.self_attn.q_proj") for t in normed]
        keys = [linear(t, w, f"{prefix}.self_attn.k_proj") for t in normed]
        values = [linear(t, w, f"{prefix}.self_attn.v_proj") for t in normed]
        head = width // heads
        mixed = []
        for i in range(len(x)):
            out = np.zeros(width)
            for h in range(heads):
                part = slice(h * head, (h + 1) * head)
                scores = np.array([queries[i][part] @ k[part] for k in keys]) / math.sqrt(head)
                weights_ = np.exp(scores - scores.max())
                weights_ /= weights_.sum()
                out[part] = sum(p * v[part] for p, v in zip(weights_, values))
            mixed.append(linear(out, w, f"{prefix}.self_attn.out_proj"))
        x = [t + m for t, m in zip(x, mixed)]
        x = [t + _mlp(layer_norm(t, w, f"{prefix}.layer_norm2", eps), w, prefix, config.hidden_act) for t in x]

    # 4. The last layer: each token's own value path, no query, no key.
    prefix = f"encoder.layers.{layers - 1}"
    last = []
    for t in x:
        y = t + linear(linear(layer_norm(t, w, f"{prefix}.layer_norm1", eps), w, f"{prefix}.self_attn.v_proj"), w,
                       f"{prefix}.self_attn.out_proj")
        last.append(y + _mlp(layer_norm(y, w, f"{prefix}.layer_norm2", eps), w, prefix, config.hidden_act))

    # 5. Post-layernorm, visual projection, class token dropped.
    patches = [projection @ layer_norm(t, w, "post_layernorm", eps) for t in last[1:]]
    return np.stack(patches).reshape(grid, grid, -1)


def _mlp(x: np.ndarray, w: dict, prefix: str, act: str) -> np.ndarray:
    return linear(activation(linear(x, w, f"{prefix}.mlp.fc1"), act), w, f"{prefix}.mlp.fc2")


def segment_embeddings(grid: np.ndarray, labels: np.ndarray, num_masks: int) -> np.ndarray:
    """Step 6, pixel by pixel: each segment's mean over its pixels of their cells' embeddings, normalised."""
    side = grid.shape[0]
    height, width = labels.shape
    sums = np.zeros((num_masks, grid.shape[-1]))
    for y in range(height):
        for x in range(width):
            sums[labels[y, x]] += grid[math.floor((y + 0.5) * side / height), math.floor((x + 0.5) * side / width)]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return sums / np.where(norms > 0, norms, 1.0)
