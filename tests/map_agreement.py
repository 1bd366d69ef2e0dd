"""Comparing labels computed two ways: another chunking, batch, attention path or reference code.

Two computations of the same difference maps that add in different orders differ by rounding, and
CPUs differ in how (Intel and AMD machines pick different kernels for different batch sizes). A
pixel may take another label only where its best two maps are closer than that difference, so
labels are compared wherever the margin exceeds twice the largest difference, never bitwise.
"""

from __future__ import annotations

import numpy as np
import torch

from emerdiff.images import resize_labels


def decided_pixels(maps: torch.Tensor, other: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(height, width) True where the label cannot depend on which of two (K, R, R) difference maps is used.

    ``other``'s margin between its best two maps must exceed twice the largest difference between
    the two; the (R, R) answer is resized to the labels' size as labels are (nearest neighbour).
    """
    discrepancy = float((maps - other).abs().amax())
    best, second = other.topk(2, dim=0).values
    decided = (best - second > 2 * discrepancy).cpu().numpy()
    return resize_labels(decided, height, width)


def assert_labels_agree(labels: np.ndarray, other_labels: np.ndarray, maps: torch.Tensor, other_maps: torch.Tensor,
                        min_decided: float = 0.99) -> None:
    """Labels at the image's size agree wherever ``decided_pixels`` says rounding cannot decide, on most pixels."""
    decided = decided_pixels(maps, other_maps, *labels.shape)
    assert decided.mean() > min_decided, f"only {decided.mean():.4f} of the pixels have a margin above the rounding"
    differing = int(np.count_nonzero(labels[decided] != other_labels[decided]))
    assert differing == 0, f"{differing} pixels with a clear margin got another label"
