"""Mini-batch k-means in torch over a stream of embeddings that need not fit in memory.

Sculley's mini-batch k-means (WWW 2010) with per-centre learning rates: each centre is the running
mean of every point ever assigned to it. The stream is read once per epoch and cut into batches of
a fixed size, so the result depends only on the points, their order and the seed, never on how the
files happened to be split into record batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

# The same seeding the method uses for its per-image masks (spec step 4).
from emerdiff.config import non_negative_int_problem, positive_int_problem
from emerdiff.kmeans import kmeans_plus_plus
from pipeline.config import option


@dataclasses.dataclass(frozen=True)
class KMeansConfig:
    num_clusters: int = option(help="Number of dataset-wide classes.", name="--classes", metavar="C")
    # Same seed, same stream => same centres.
    seed: int = option(0, "k-means seed.")
    # Large enough that a batch sees every cluster, small enough for any device.
    batch_size: int = option(4096, "Embeddings per k-means update.")
    # The centres settle within a few passes on segment embeddings.
    epochs: int = option(10, "Passes over all embeddings.")
    # Cluster directions (cosine similarity): the scale of a mean query feature varies with the
    # segment's size and content more than its meaning does.
    normalize: bool = option(True, "Cluster raw embeddings instead of unit-length ones (cosine).", name="--no-normalize")
    device: str = option("cpu", "torch device.")

    def __post_init__(self) -> None:
        for name in ("num_clusters", "batch_size", "epochs"):
            if problem := positive_int_problem(name, getattr(self, name)):
                raise ValueError(problem)
        if problem := non_negative_int_problem("seed", self.seed):
            raise ValueError(problem)


class MiniBatchKMeans:
    def __init__(self, config: KMeansConfig):
        self.config = config
        self.centres: torch.Tensor | None = None  # (K, C) float32
        self._counts: torch.Tensor | None = None  # (K,) points assigned so far

    def fit(self, stream: Callable[[], Iterable[np.ndarray]], progress: Callable[[int], None] | None = None) -> MiniBatchKMeans:
        """Fit on ``stream()``, called once per epoch, yielding (n, C) arrays of points.

        ``progress`` is called with the number of points after each batch. Raises ValueError when
        the stream holds fewer points than clusters.
        """
        for _ in range(self.config.epochs):
            for batch in _fixed_batches(stream(), self.config.batch_size):
                points = self._prepare(batch)
                if self.centres is None:
                    self._initialise(points)
                self._update(points)
                if progress is not None:
                    progress(len(batch))
        if self.centres is None:
            raise ValueError("no points to cluster")
        return self

    def predict(self, points: np.ndarray) -> np.ndarray:
        """(n,) int64 id of the nearest centre for each of (n, C) points; ties go to the lowest id."""
        if self.centres is None:
            raise RuntimeError("fit the model before predicting")
        return _nearest(self._prepare(points), self.centres).cpu().numpy()

    # -- steps ---------------------------------------------------------------------------------

    def _prepare(self, points: np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(points, dtype=np.float32), device=self.config.device)
        return torch.nn.functional.normalize(tensor, dim=1) if self.config.normalize else tensor

    def _initialise(self, points: torch.Tensor) -> None:
        # k-means++ on the first batch; the first batch is full-size unless the stream is smaller.
        if points.shape[0] < self.config.num_clusters:
            raise ValueError(
                f"only {points.shape[0]} points to cluster into {self.config.num_clusters} clusters; "
                "label more images or ask for fewer classes"
            )
        generator = torch.Generator("cpu").manual_seed(self.config.seed)
        self.centres = kmeans_plus_plus(points, self.config.num_clusters, 1, generator)[0]  # one restart
        self._counts = torch.zeros(self.config.num_clusters, device=points.device)

    def _update(self, points: torch.Tensor) -> None:
        assignment = _nearest(points, self.centres)
        sums = torch.zeros_like(self.centres).index_add_(0, assignment, points)
        batch_counts = torch.bincount(assignment, minlength=self.config.num_clusters).float()
        self._counts += batch_counts
        # Running mean: c <- c + (sum_x - n_c * c) / N_c, the closed form of per-point 1/N_c steps.
        step = (sums - batch_counts[:, None] * self.centres) / self._counts.clamp_min(1)[:, None]
        self.centres = self.centres + step


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cdist(points, centres).argmin(dim=1)


def _fixed_batches(arrays: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of (n_i, C) arrays into (size, C) arrays (the last may be shorter)."""
    pending: list[np.ndarray] = []
    held = 0
    for array in arrays:
        while len(array):
            take = array[: size - held]
            array = array[len(take):]
            pending.append(take)
            held += len(take)
            if held == size:
                yield np.concatenate(pending)
                pending, held = [], 0
    if held:
        yield np.concatenate(pending)
