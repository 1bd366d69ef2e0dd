"""From decoded image pairs to difference maps, scores and embeddings (spec steps 10-12), in torch on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def difference_norms(minus: torch.Tensor, plus: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """(pairs, H, W) float32 ||blur(I-) - blur(I+)||_2 over the channels of (pairs, 3, H, W) images (step 10).

    The blur is linear, so it is applied once, to the signed difference; it comes before the norm.
    """
    signed = (minus.float() - plus.float())  # (pairs, 3, H, W)
    pairs, channels, height, width = signed.shape
    blurred = gaussian_blur(signed.reshape(pairs * channels, height, width), kernel_size, sigma)
    return blurred.view(pairs, channels, height, width).pow(2).sum(dim=1).sqrt()


def gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur (K, H, W) maps with a normalised separable Gaussian and reflect borders (the edge pixel not repeated)."""
    if kernel_size == 1:
        return maps
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(device=maps.device, dtype=maps.dtype)
    pad = kernel_size // 2
    images = maps[:, None]  # (K, 1, H, W)
    # torch's "reflect" mirrors without repeating the edge pixel, which is BORDER_REFLECT_101.
    images = F.conv2d(F.pad(images, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    images = F.conv2d(F.pad(images, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    return images[:, 0]


def confidence_margin(maps: torch.Tensor) -> torch.Tensor:
    """(H, W): (best - second best) / best of the (K, H, W) maps; 1 where only one map is non-zero."""
    if maps.shape[0] == 1:
        return torch.ones_like(maps[0])
    top = maps.topk(2, dim=0).values
    return (top[0] - top[1]) / top[0].clamp_min(torch.finfo(maps.dtype).tiny)


def mean_per_label(values: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(K,) mean of an (H, W) map over each label's pixels; 0 for labels with no pixel.

    A masked sum per label, not ``index_add_``: on CUDA that adds with float atomics in whatever
    order the threads arrive, so the same image could score differently from run to run.
    """
    ids = torch.arange(num_labels, device=labels.device)
    members = labels.reshape(1, -1) == ids[:, None]  # (K, H * W)
    sums = torch.where(members, values.reshape(1, -1), 0).sum(dim=1)
    return sums / members.sum(dim=1).clamp_min(1).to(values.dtype)


def segment_embeddings(labels: torch.Tensor, features: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(K, C) mean query feature over each segment (spec step 12).

    Each feature cell counts with the fraction of its pixels the segment covers, so a segment
    smaller than a cell still gets the features of the cells it touches. Zero for absent labels.
    """
    tokens, _ = features.shape
    side = int(round(tokens**0.5))
    one_hot = F.one_hot(labels, num_labels).permute(2, 0, 1).float()  # (K, H, W)
    coverage = F.adaptive_avg_pool2d(one_hot[None], (side, side))[0].reshape(num_labels, tokens)  # (K, tokens)
    totals = coverage.sum(dim=1, keepdim=True)
    return (coverage @ features.float()) / totals.clamp_min(torch.finfo(torch.float32).tiny)
