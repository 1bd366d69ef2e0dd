"""Dataset-wide classes from per-image segments: k-means over every segment embedding.

EmerDiff's segment ids only mean something within one image. Clustering the segments' embeddings
(spec step 12) over the whole output gives each (key, segment id) a class shared by all images;
``emerdiff cluster`` writes that mapping, ``evaluate`` uses it for the dataset-level protocol and
``export --clusters`` relabels with it.

A class table folder holds:
    segment_classes.parquet   key, segment_id, class: one row per segment of every ok row
    centroids.npy             (C, D) float32 centres, to assign segments of later outputs
    clusters.json             what produced it: source output, k-means options, class sizes
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Collection, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm import tqdm

from jobs.options import nested
from jobs.tools.kmeans import KMeansConfig, MiniBatchKMeans
from pipeline.config import option, output_option
from schemas.reading import flatten_segments, iter_batches

CLASS_TABLE_FILE = "segment_classes.parquet"
CENTROIDS_FILE = "centroids.npy"
SUMMARY_FILE = "clusters.json"

CLASS_TABLE_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("segment_id", pa.int32(), nullable=False),  # the segment's value in the row's label map
    pa.field("class", pa.int32(), nullable=False),  # dataset-wide class, 0..C-1
])


def embedding_stream(output: str, storage_options: dict, keys: Collection[str] | None = None
                     ) -> Callable[[], Iterator[np.ndarray]]:
    """A re-callable stream of (n, D) segment embeddings of the ok rows (only ``keys``' when given)."""

    def stream() -> Iterator[np.ndarray]:
        for _, batch in iter_batches(output, ["key", "segments.id", "segments.embedding"], storage_options, ok_only=True):
            segments = flatten_segments(batch)
            if keys is None:
                yield segments.embedding
                continue
            wanted = np.array([key in keys for key in batch.column("key").to_pylist()], dtype=bool)
            yield segments.embedding[wanted[segments.row]]

    return stream


def fit_classes(output: str, config: KMeansConfig, storage_options: dict, keys: Collection[str] | None = None
                ) -> MiniBatchKMeans:
    """k-means over the output's segment embeddings; raises ValueError if there are too few."""
    with tqdm(desc=f"k-means ({config.epochs} epochs)", unit="segment", disable=None) as bar:
        return MiniBatchKMeans(config).fit(embedding_stream(output, storage_options, keys), progress=bar.update)


def segment_lookup(segment_ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A table indexed by segment id giving its class; ids without a segment give -1."""
    table = np.full(int(segment_ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    table[segment_ids] = classes
    return table


def relabel(labels: np.ndarray, lookup: np.ndarray, key: str) -> np.ndarray:
    """Segment-id map -> class map; ValueError when a pixel's id has no segment in the row."""
    if labels.max(initial=0) >= len(lookup) or (lookup[labels] < 0).any():
        raise ValueError(f"row {key!r}: its label map holds segment ids that its segments list lacks")
    return lookup[labels]


# -- the class table ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    output: str = output_option()
    kmeans: KMeansConfig = nested("k-means")
    # The class table folder; see the module docstring.
    destination: str | None = option(
        None, "Class table folder (default: OUTPUT-classes<C>, beside the output).", name="--out", metavar="DIR")
    png: bool = option(False, "Also write the label maps relabelled to classes, DIR/ann_dir/<key>.png.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.destination is None:
            object.__setattr__(self, "destination", f"{self.output.rstrip('/')}-classes{self.kmeans.num_clusters}")


def cluster_output(job: ClusterJob) -> dict:
    """Fit, then write the class table folder; returns what ``clusters.json`` records."""
    model = fit_classes(job.output, job.kmeans, job.storage_options)
    fs, root = url_to_fs(job.destination, **job.storage_options)
    fs.makedirs(root, exist_ok=True)
    sizes = _write_class_table(job, model, fs, f"{root}/{CLASS_TABLE_FILE}")
    buffer = io.BytesIO()
    np.save(buffer, model.centres.cpu().numpy())
    fs.pipe_file(f"{root}/{CENTROIDS_FILE}", buffer.getvalue())
    summary = {
        "source": job.output,
        "num_classes": job.kmeans.num_clusters,
        "kmeans": dataclasses.asdict(job.kmeans),
        "num_segments": int(sizes.sum()),
        "segments_per_class": sizes.tolist(),
    }
    fs.pipe_file(f"{root}/{SUMMARY_FILE}", json.dumps(summary, indent=1).encode())
    return summary


def _write_class_table(job: ClusterJob, model: MiniBatchKMeans, fs, path: str) -> np.ndarray:
    sizes = np.zeros(job.kmeans.num_clusters, dtype=np.int64)
    columns = ["key", "segments.id", "segments.embedding"]
    with fs.open(path, "wb") as file, pq.ParquetWriter(file, CLASS_TABLE_SCHEMA) as writer:
        for _, batch in tqdm(iter_batches(job.output, columns, job.storage_options, ok_only=True),
                             desc="assigning classes", unit="batch", disable=None):
            segments = flatten_segments(batch)
            classes = model.predict(segments.embedding) if len(segments.id) else np.zeros(0, np.int64)
            sizes += np.bincount(classes, minlength=len(sizes))
            keys = batch.column("key").take(pa.array(segments.row))
            writer.write_batch(pa.RecordBatch.from_arrays(
                [keys, pa.array(segments.id, pa.int32()), pa.array(classes, pa.int32())], schema=CLASS_TABLE_SCHEMA
            ))
    return sizes


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """A class table folder read back: each ok row's segment ids and their classes."""

    num_classes: int
    segments: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (segment ids, classes)

    def lookup(self, key: str) -> np.ndarray:
        """The row's segment id -> class table (see ``segment_lookup``)."""
        if key not in self.segments:
            raise ValueError(f"row {key!r} is not in the class table; was the table made from this output?")
        return segment_lookup(*self.segments[key])


def read_class_table(destination: str, storage_options: dict | None = None) -> ClassTable:
    """Read a class table folder written by ``cluster_output`` (held in memory: ~50 bytes a segment)."""
    fs, root = url_to_fs(destination, **(storage_options or {}))
    if not fs.exists(f"{root}/{SUMMARY_FILE}"):
        raise ValueError(f"{destination} holds no {SUMMARY_FILE}; write a class table with `emerdiff cluster`")
    summary = json.loads(fs.cat_file(f"{root}/{SUMMARY_FILE}"))
    with fs.open(f"{root}/{CLASS_TABLE_FILE}", "rb") as file:
        table = pq.read_table(file)
    keys = table.column("key").to_numpy(zero_copy_only=False)
    ids = table.column("segment_id").to_numpy()
    classes = table.column("class").to_numpy()
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
    segments = {
        keys[order[start]]: (ids[order[start:stop]], classes[order[start:stop]])
        for start, stop in zip(bounds[:-1], bounds[1:])
    }
    return ClassTable(num_classes=summary["num_classes"], segments=segments)
