"""Scoring a labelling output against ground-truth shards, under the protocols of ``metrics``.

Ground truth is ``<key>.seg.png`` in WebDataset shards (``emerdiff make-shards --gt``), matched to
the output's rows by key. Only ok rows whose key has ground truth are scored; the report counts the
rest (error rows, keys never labelled, rows without ground truth) so nothing is silently dropped.
"""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
from PIL import Image
from tqdm import tqdm

from jobs.tools.clustering import fit_classes, relabel, segment_lookup
from jobs.tools.kmeans import KMeansConfig, MiniBatchKMeans
from jobs.tools.metrics import (
    MatchCounts,
    confusion_matrix,
    hungarian_match,
    per_image_counts,
)
from jobs.tools.protocols import DATASET, PER_IMAGE, PROTOCOLS
from emerdiff.config import positive_int_problem
from pipeline.config import option, output_option
from pipeline.sources import ShardStream
from schemas.labels import STATUS_OK, decode_label_png
from schemas.reading import flatten_segments, iter_batches
from schemas.shards import expand_shards

GROUND_TRUTH_MEMBER = "seg.png"


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    output: str = output_option()
    ground_truth: str = option(
        help="Ground-truth shards: a folder of .tar files, a glob, a brace pattern or one shard.", name="--gt", metavar="SHARDS")
    # Ids outside 0..C-1 (other than ignore_index) are an error, not silently dropped.
    num_classes: int = option(
        help="Number of ground-truth classes (ids 0..C-1; 27 for COCO-Stuff-27).", name="--classes", metavar="C")
    ignore_index: int = option(255, "Ground-truth value of unlabelled pixels.")
    protocols: tuple[str, ...] = option(
        PROTOCOLS, "Protocol to report; repeat for several.", name="--protocol", action="append",
        type=str, choices=list(PROTOCOLS), metavar=None)
    # dataset-hungarian clusters segment embeddings into C classes first; these steer that k-means.
    seed: int = option(0, "Seed of the dataset-level k-means.")
    kmeans_epochs: int = option(10, "Passes of the dataset-level k-means.")
    device: str = option("cpu", "torch device for the k-means.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if positive_int_problem("num_classes", self.num_classes):
            raise ValueError(f"num_classes must be a positive integer (the ground truth's class count), got {self.num_classes!r}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} is one of the classes 0..{self.num_classes - 1}; pick another")
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown or not self.protocols:
            raise ValueError(f"protocols must be some of {list(PROTOCOLS)}, got {list(self.protocols)}")

    def kmeans(self) -> KMeansConfig:
        return KMeansConfig(num_clusters=self.num_classes, seed=self.seed, epochs=self.kmeans_epochs, device=self.device)


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    num_classes: int
    counts: dict[str, MatchCounts]  # protocol -> summed counts
    num_images: int  # ok rows scored
    ground_truth_images: int
    error_rows: int  # rows with ground truth whose labelling failed
    unlabelled: int  # ground-truth keys with no row at all
    without_ground_truth: int  # ok rows whose key has no ground truth

    def to_dict(self) -> dict:
        """The ``--json`` document: mIoU and accuracy in percent per protocol, plus the counts."""
        return {
            "protocols": {
                name: {
                    "mIoU": counts.mean_iou,
                    "pixel_accuracy": counts.pixel_accuracy,
                    "num_images": self.num_images,
                    "num_classes": self.num_classes,
                    "iou_per_class": [None if math.isnan(v) else float(v * 100) for v in counts.iou],
                }
                for name, counts in self.counts.items()
            },
            "ground_truth_images": self.ground_truth_images,
            "error_rows": self.error_rows,
            "unlabelled": self.unlabelled,
            "without_ground_truth": self.without_ground_truth,
        }

    def table(self) -> str:
        """The printed report: one line per protocol, each naming it."""
        lines = [f"{'protocol':<22} {'mIoU':>7} {'pixel acc':>9} {'images':>7} {'classes':>7}"]
        for name, counts in self.counts.items():
            lines.append(
                f"{name:<22} {counts.mean_iou:7.2f} {counts.pixel_accuracy:9.2f} {self.num_images:7d} {self.num_classes:7d}"
            )
        lines.append(
            f"ground truth: {self.ground_truth_images} images; not scored: {self.error_rows} error rows, "
            f"{self.unlabelled} never labelled; {self.without_ground_truth} labelled rows had no ground truth"
        )
        return "\n".join(lines)


def evaluate(config: EvaluationConfig) -> EvaluationReport:
    """Score the output; raises ValueError for unusable input (no overlap, stray class ids, ...)."""
    truth = read_ground_truth(config.ground_truth, config.storage_options)
    classes = None
    if DATASET in config.protocols:
        classes = fit_classes(config.output, config.kmeans(), config.storage_options, keys=truth)
    tally = _Tally(config, truth, classes)
    columns = ["key", "status", "labels", "segments.id"] + (["segments.embedding"] if classes else [])
    with tqdm(total=len(truth), desc="evaluate", unit="img", disable=None) as bar:
        for _, batch in iter_batches(config.output, columns, config.storage_options):
            bar.update(tally.add_batch(batch))
    return tally.report()


class _Tally:
    """Counts of one evaluation, fed a record batch at a time."""

    def __init__(self, config: EvaluationConfig, truth: dict[str, bytes], classes: MiniBatchKMeans | None):
        self.config, self.truth, self.classes = config, truth, classes
        self.counts = {name: MatchCounts.zeros(config.num_classes) for name in config.protocols if name != DATASET}
        self.dataset_confusion = np.zeros((config.num_classes, config.num_classes), dtype=np.int64)
        self.seen: set[str] = set()
        self.scored = self.errors = self.without_truth = 0

    def add_batch(self, batch) -> int:
        """Score the batch's rows that have ground truth; returns how many it had."""
        segments = flatten_segments(batch)
        classes = self.classes.predict(segments.embedding) if self.classes and len(segments.id) else None
        rows = zip(*(batch.column(name).to_pylist() for name in ("key", "status", "labels")))
        before = len(self.seen)
        for row, (key, status, cell) in enumerate(rows):
            if key not in self.truth:
                self.without_truth += status == STATUS_OK
                continue
            self.seen.add(key)
            if status != STATUS_OK:
                self.errors += 1
                continue
            mine = segments.row == row
            lookup = segment_lookup(segments.id[mine], classes[mine]) if classes is not None else None
            try:
                self._add_row(key, decode_label_png(cell["bytes"]), lookup)
            except ValueError as error:
                raise ValueError(f"sample {key!r}: {error}") from None
        return len(self.seen) - before

    def _add_row(self, key: str, labels: np.ndarray, lookup: np.ndarray | None) -> None:
        config = self.config
        ground_truth = _decode_truth(self.truth[key])
        self.scored += 1
        if PER_IMAGE in self.counts:
            self.counts[PER_IMAGE] += per_image_counts(ground_truth, labels, config.num_classes, config.ignore_index)
        if lookup is not None:
            self.dataset_confusion += confusion_matrix(
                ground_truth, relabel(labels, lookup, key), config.num_classes, config.ignore_index,
                num_predicted=config.num_classes,
            )

    def report(self) -> EvaluationReport:
        if not self.scored:
            raise ValueError(f"no ok row of {self.config.output} has ground truth in {self.config.ground_truth}: "
                             "were both made from the same shards?")
        counts = dict(self.counts)
        if self.classes is not None:
            counts[DATASET] = hungarian_match(self.dataset_confusion)
        return EvaluationReport(
            num_classes=self.config.num_classes, counts=counts, num_images=self.scored,
            ground_truth_images=len(self.truth), error_rows=self.errors,
            unlabelled=len(self.truth) - len(self.seen), without_ground_truth=self.without_truth,
        )


def read_ground_truth(url: str, storage_options: dict) -> dict[str, bytes]:
    """key -> ground-truth PNG bytes from every shard the URL names (held compressed in memory)."""
    truth: dict[str, bytes] = {}
    shards = ground_truth_shards(url, storage_options)
    for shard in tqdm(shards, desc="reading ground truth", unit="shard", disable=None):
        for sample in ShardStream(shard, storage_options):
            if GROUND_TRUTH_MEMBER in sample:
                truth[sample["__key__"]] = sample[GROUND_TRUTH_MEMBER]
    if not truth:
        raise ValueError(f"no sample in {url} has a {GROUND_TRUTH_MEMBER}; make the shards with `emerdiff make-shards --gt`")
    return truth


def ground_truth_shards(url: str, storage_options: dict) -> list[str]:
    """The shards ``url`` names: a folder's ``*.tar`` files, a glob, a brace pattern or one shard."""
    try:
        return expand_shards([url], storage_options, folders=True)
    except FileNotFoundError as error:
        raise ValueError(f"ground truth {error}") from None


def _decode_truth(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)
