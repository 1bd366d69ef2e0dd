"""Dataset-wide classes from per-image segments: k-means over every segment embedding.

EmerDiff's segment ids only mean something within one image. Clustering the segments' embeddings
(spec step 12) over the whole output gives every segment a class shared by all images; ``emerdiff
cluster`` writes them as a class table (``schemas.classes``), ``evaluate`` clusters the same way
for the dataset-level protocol, and ``export --clusters`` relabels with it. Beside the table,
``centroids.npy`` holds the (C, D) float32 centres, to assign segments of later outputs.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from jobs.options import nested
from jobs.tools.kmeans import KMeansConfig, MiniBatchKMeans
from pipeline.config import option, output_option
from schemas.classes import KIND_CLUSTERS, MAX_CLASSES, UNKNOWN, ClassTableWriter
from schemas.reading import flatten_segments, iter_batches, iter_shards
from schemas.urls import redact_url

CENTROIDS_FILE = "centroids.npy"
# (shard, batch with ROW positions) -> which of the batch's rows to use
RowFilter = Callable[[str, object], np.ndarray]


def embedding_stream(output: str, storage_options: dict, wanted: RowFilter | None = None
                     ) -> Callable[[], Iterator[np.ndarray]]:
    """A re-callable stream of (n, D) segment embeddings of the ok rows (only ``wanted``'s when given)."""

    def stream() -> Iterator[np.ndarray]:
        columns = ["key", "segments.id", "segments.embedding"]
        for shard, batch in iter_batches(output, columns, storage_options, ok_only=True, positions=True):
            segments = flatten_segments(batch)
            if wanted is None:
                yield segments.embedding
                continue
            yield segments.embedding[wanted(shard, batch)[segments.row]]

    return stream


def fit_classes(output: str, config: KMeansConfig, storage_options: dict, wanted: RowFilter | None = None
                ) -> MiniBatchKMeans:
    """k-means over the output's segment embeddings; raises ValueError if there are too few."""
    with tqdm(desc=f"k-means ({config.epochs} epochs)", unit="segment", disable=None) as bar:
        return MiniBatchKMeans(config).fit(embedding_stream(output, storage_options, wanted), progress=bar.update)


# -- the class table ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    output: str = output_option()
    kmeans: KMeansConfig = nested("k-means")
    # The class table folder; see the module docstring.
    destination: str | None = option(
        None, "Class table folder (default: OUTPUT-classes<C>, beside the output).", name="--out", metavar="DIR")
    png: bool = option(False, "Also write the label maps relabelled to classes, DIR/ann_dir/<shard>/<key>.png (as export png names them).")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kmeans.num_clusters > MAX_CLASSES:
            raise ValueError(f"--classes must be at most {MAX_CLASSES} (class maps are 8-bit PNGs and {UNKNOWN} "
                             f"marks unlabelled pixels), got {self.kmeans.num_clusters}")
        if self.destination is None:
            object.__setattr__(self, "destination", f"{self.output.rstrip('/')}-classes{self.kmeans.num_clusters}")


def cluster_output(job: ClusterJob) -> dict:
    """Fit, then write the class table folder (and the centres); returns what ``classes.json`` records."""
    model = fit_classes(job.output, job.kmeans, job.storage_options)
    writer = ClassTableWriter(job.destination, job.storage_options, job.kmeans.num_clusters)
    columns = ["key", "segments.id", "segments.embedding"]
    for shard, batch in tqdm(iter_shards(job.output, columns, job.storage_options, ok_only=True),
                             desc="assigning classes", unit="shard", disable=None):
        segments = flatten_segments(batch)
        classes = model.predict(segments.embedding) if len(segments.id) else np.zeros(0, np.int64)
        writer.write_batch(shard, batch, segments, classes)
    buffer = io.BytesIO()
    np.save(buffer, model.centres.cpu().numpy())
    writer.fs.pipe_file(f"{writer.root}/{CENTROIDS_FILE}", buffer.getvalue())
    return writer.close(KIND_CLUSTERS, redact_url(job.output), None, kmeans=dataclasses.asdict(job.kmeans))
