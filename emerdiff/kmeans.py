"""k-means on the model's device (spec step 4): k-means++ seeding, then Lloyd iterations."""

from __future__ import annotations

import torch


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int, seed: int) -> torch.Tensor:
    """Cluster ids (N,) in 0..num_clusters-1 for points (N, C); deterministic for a seed.

    Seeding draws from a CPU generator so the choice of centres does not depend on the device.
    A cluster that loses all its points keeps its centre (and simply ends up unused).
    """
    count = points.shape[0]
    if not 1 <= num_clusters <= count:
        raise ValueError(
            f"num_masks={num_clusters} must be between 1 and the number of feature tokens ({count}); "
            "lower num_masks or raise resolution."
        )
    points = points.float()
    centres = kmeans_plus_plus(points, num_clusters, torch.Generator("cpu").manual_seed(seed))
    assignment = _nearest(points, centres)
    for _ in range(iterations):
        centres = _cluster_means(points, assignment, centres)
        updated = _nearest(points, centres)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return assignment


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # (N, K)
    return distances.argmin(dim=1)  # ties go to the lowest cluster id


def _cluster_means(points: torch.Tensor, assignment: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    num_clusters = previous.shape[0]
    sums = torch.zeros_like(previous).index_add_(0, assignment, points)
    counts = torch.bincount(assignment, minlength=num_clusters).to(points.dtype)[:, None]
    return torch.where(counts > 0, sums / counts.clamp_min(1), previous)


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, generator: torch.Generator) -> torch.Tensor:
    """Initial centres (num_clusters, C): each drawn with probability proportional to its squared distance to the nearest chosen one."""
    count = points.shape[0]
    chosen = [int(torch.randint(count, (1,), generator=generator))]
    nearest_sq = ((points - points[chosen[0]]) ** 2).sum(-1)
    for _ in range(1, num_clusters):
        weights = nearest_sq.double().cpu()
        if weights.sum() > 0:
            index = int(torch.multinomial(weights, 1, generator=generator))
        else:  # every point coincides with a centre (a flat image): take the first unused point
            index = next(i for i in range(count) if i not in chosen)
        chosen.append(index)
        nearest_sq = torch.minimum(nearest_sq, ((points - points[index]) ** 2).sum(-1))
    return points[chosen].clone()
