"""k-means on the model's device (spec step 4): k-means++ seeding, Lloyd iterations, best of many restarts."""

from __future__ import annotations

import torch


def kmeans(points: torch.Tensor, num_clusters: int, iterations: int, restarts: int, seed: int) -> torch.Tensor:
    """Cluster ids (N,) in 0..num_clusters-1 for points (N, C); deterministic for a seed.

    All ``restarts`` run at once as one batch; the one with the lowest inertia (sum of squared
    distances to the assigned centres) is kept, ties going to the first. Every random draw comes
    from a CPU generator, so the seeding does not depend on the device. A cluster that loses all
    its points keeps its centre (and simply ends up unused).
    """
    count = points.shape[0]
    if not 1 <= num_clusters <= count:
        raise ValueError(
            f"num_masks={num_clusters} must be between 1 and the number of feature tokens ({count}); "
            "lower num_masks or raise resolution."
        )
    points = points.float()
    centres = kmeans_plus_plus(points, num_clusters, restarts, torch.Generator("cpu").manual_seed(seed))
    assignment = _nearest(points, centres)
    # A restart that has settled is a fixed point of the update, so iterating until every restart
    # has settled gives each one exactly its own run to convergence.
    for _ in range(iterations):
        centres = _cluster_means(points, assignment, centres)
        updated = _nearest(points, centres)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    best = int(_inertia(points, centres, assignment).argmin())
    return assignment[best]


def kmeans_plus_plus(points: torch.Tensor, num_clusters: int, restarts: int, generator: torch.Generator) -> torch.Tensor:
    """Initial centres (restarts, num_clusters, C), each restart seeded by k-means++.

    Each new centre is a point drawn with probability proportional to its squared distance to the
    nearest centre chosen so far: inverse-CDF sampling with uniforms drawn on the CPU, so that the
    device runs without a host round trip per centre.
    """
    count = points.shape[0]
    uniforms = torch.rand(restarts, num_clusters, generator=generator, dtype=torch.float64).to(points.device)
    chosen = (uniforms[:, 0] * count).long().clamp_max(count - 1)  # (restarts,) the first centre: uniform
    indices = [chosen]
    nearest_sq = _squared_distances(points, points[chosen])  # (restarts, N)
    for k in range(1, num_clusters):
        cumulative = _integer_weights(nearest_sq).cumsum(dim=1)  # (restarts, N)
        target = (uniforms[:, k : k + 1] * cumulative[:, -1:]).long()
        # The first point whose cumulative weight exceeds the target; points of weight 0 (already
        # chosen, or coinciding with a centre) are never drawn unless every weight is 0.
        chosen = torch.searchsorted(cumulative, target, right=True)[:, 0].clamp_max(count - 1)
        indices.append(chosen)
        nearest_sq = torch.minimum(nearest_sq, _squared_distances(points, points[chosen]))
    return points[torch.stack(indices, dim=1)]  # (restarts, K, C)


def _integer_weights(weights: torch.Tensor) -> torch.Tensor:
    """(R, N) int64 weights proportional to non-negative (R, N) ones, the largest of each row 2**40.

    Their cumulative sums are exact, so k-means++ draws the same points on every device: CUDA's
    floating-point cumsum is not deterministic (``torch.use_deterministic_algorithms`` lists it).
    N * 2**40 stays far below int64's limit; a weight under 2**-40 of the row's largest counts as 0.
    """
    largest = weights.double().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (weights.double() / largest * 2.0**40).round().long()


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(R, N): squared distance from every point to one centre per restart (centres (R, C))."""
    return ((points[None, :, :] - centres[:, None, :]) ** 2).sum(-1)


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(R, N) id of each point's nearest centre per restart; ties go to the lowest id."""
    # |p|^2 - 2 p.c + |c|^2, without the (R, N, K, C) difference tensor; |p|^2 is the same for every
    # centre, so it cannot change the argmin and is left out.
    distances = (centres**2).sum(-1)[:, None, :] - 2 * points @ centres.transpose(1, 2)  # (R, N, K)
    return distances.argmin(dim=2)


def _cluster_means(points: torch.Tensor, assignment: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    num_clusters = previous.shape[1]
    one_hot = torch.nn.functional.one_hot(assignment, num_clusters).to(points.dtype)  # (R, N, K)
    sums = one_hot.transpose(1, 2) @ points  # (R, K, C)
    counts = one_hot.sum(dim=1)[:, :, None]  # (R, K, 1)
    return torch.where(counts > 0, sums / counts.clamp_min(1), previous)


def _inertia(points: torch.Tensor, centres: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """(R,) sum of squared distances from each point to its assigned centre."""
    assigned = torch.gather(centres, 1, assignment[:, :, None].expand(-1, -1, centres.shape[2]))  # (R, N, C)
    return ((points[None] - assigned) ** 2).sum(dim=(1, 2))
