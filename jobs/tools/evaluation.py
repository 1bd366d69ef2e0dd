"""Scoring a labelling output against ground-truth shards, under the protocols of ``metrics``.

Ground truth is ``<key>.seg.png`` in WebDataset shards (``emerdiff make-shards --gt``): the shards
that were labelled, or shards of the same names holding the same keys. A row and a ground-truth
sample match when their shard name and key are the same and the key is at the same occurrence in
the shard (a key heading two samples of one shard is two rows: the first matches the first). Only ok
rows with ground truth are scored; the report counts the rest (error rows, samples never labelled,
rows without ground truth) so nothing is silently dropped.

Protocols: ``per-image-hungarian`` and ``dataset-hungarian`` match segments to classes without names
(``metrics``); ``by-name`` takes a named class table (``emerdiff name``) and maps each class to the
ground-truth class of the same name, as the EmerDiff paper's open-vocabulary Table 3 does.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections import Counter
from collections.abc import Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from emerdiff.config import positive_int_problem
from jobs.tools.clustering import fit_classes
from jobs.tools.cocostuff import GT_MAPPINGS
from jobs.tools.kmeans import KMeansConfig, MiniBatchKMeans
from jobs.tools.metrics import MatchCounts, confusion_matrix, hungarian_match, named_match, per_image_counts
from jobs.tools.protocols import BY_NAME, DATASET, PER_IMAGE, PROTOCOLS
from pipeline.config import option, output_option
from pipeline.sources import ShardStream
from schemas.classes import UNKNOWN, ClassTable, name_key, relabel, segment_lookup
from schemas.labels import STATUS_OK, decode_label_png
from schemas.reading import ROW, flatten_segments, iter_batches
from schemas.shards import expand_shards, shard_name
from schemas.urls import read_list_file

logger = logging.getLogger(__name__)

GROUND_TRUTH_MEMBER = "seg.png"
SampleId = tuple[str, str, int]  # (shard name, key, occurrence of the key in the shard, from 0)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    output: str = output_option()
    ground_truth: str = option(
        help="Ground-truth shards: a folder of .tar files, a glob, a brace pattern or one shard.", name="--gt", metavar="SHARDS")
    # Ids outside 0..C-1 (other than ignore_index) are an error, not silently dropped.
    num_classes: int | None = option(
        None, "Number of ground-truth classes (ids 0..C-1; 27 for COCO-Stuff-27). Default: the number of "
              "ground-truth class names, when --gt-mapping or --gt-names gives them.", name="--classes", metavar="C")
    ignore_index: int = option(255, "Ground-truth value of unlabelled pixels.")
    protocols: tuple[str, ...] | None = option(
        None, "Protocol to report; repeat for several. Default: the two Hungarian protocols, and by-name when "
              "--clusters is a named class table and the ground truth has names (dataset-hungarian then clusters "
              "on its own).",
        name="--protocol", action="append", type=str, choices=list(PROTOCOLS), metavar="PROTOCOL")
    clusters: str | None = option(
        None, "Class table folder: from `emerdiff name` it is scored by-name; from `emerdiff cluster` it gives "
              "dataset-hungarian its classes instead of a k-means of its own.", metavar="DIR")
    gt_mapping: str | None = option(
        None, "The ground truth's class names are those of this mapping (the shards were made with "
              "`make-shards --gt-mapping`).", choices=sorted(GT_MAPPINGS))
    gt_names: str | None = option(
        None, "Text file of the ground truth's class names, one per line in class-id order ('#' comments and "
              "blank lines skipped).", metavar="FILE")
    # dataset-hungarian clusters segment embeddings into C classes first; these steer that k-means.
    seed: int = option(0, "Seed of the dataset-level k-means.")
    kmeans_epochs: int = option(10, "Passes of the dataset-level k-means.")
    device: str = option("cpu", "torch device for the k-means.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gt_mapping is not None and self.gt_names is not None:
            raise ValueError("pass either --gt-mapping or --gt-names, not both: each names the ground truth's classes")
        if self.gt_mapping is not None and self.gt_mapping not in GT_MAPPINGS:
            raise ValueError(f"gt_mapping must be one of {sorted(GT_MAPPINGS)}, got {self.gt_mapping!r}")
        if self.num_classes is None and self.gt_mapping is None and self.gt_names is None:
            raise ValueError("the number of ground-truth classes is needed: pass --classes C (or --gt-mapping / --gt-names)")
        if self.num_classes is not None and positive_int_problem("num_classes", self.num_classes):
            raise ValueError(f"num_classes must be a positive integer (the ground truth's class count), got {self.num_classes!r}")
        unknown = sorted(set(self.protocols or ()) - set(PROTOCOLS))
        if unknown or self.protocols == ():
            raise ValueError(f"protocols must be some of {list(PROTOCOLS)}, got {list(self.protocols or ())}")


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    num_classes: int
    counts: dict[str, MatchCounts]  # protocol -> summed counts
    num_images: int  # ok rows scored
    ground_truth_images: int
    error_rows: int  # rows with ground truth whose labelling failed
    unlabelled: int  # ground-truth samples with no row at all
    without_ground_truth: int  # ok rows with no ground truth
    # by-name: predicted class names no ground-truth class has (their pixels count as wrong)
    names_not_in_ground_truth: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The ``--json`` document: mIoU and accuracy in percent per protocol, plus the counts."""
        document = {
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
        if BY_NAME in self.counts:
            document["protocols"][BY_NAME]["names_not_in_ground_truth"] = list(self.names_not_in_ground_truth)
        return document

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
        if BY_NAME in self.counts:
            absent = ", ".join(self.names_not_in_ground_truth) or "none"
            lines.append(f"by-name: pixels of unknown segments ({UNKNOWN}) and of class names the ground truth lacks "
                         f"count as wrong; names it lacks: {absent}")
        return "\n".join(lines)


def evaluate(config: EvaluationConfig) -> EvaluationReport:
    """Score the output; raises ValueError for unusable input (no overlap, stray class ids, ...)."""
    truth_names = ground_truth_names(config)
    num_classes = _num_classes(config, truth_names)
    table = ClassTable(config.clusters, config.storage_options) if config.clusters else None
    protocols = _protocols(config, table, truth_names)
    truth = read_ground_truth(config.ground_truth, config.storage_options)
    matched = match_rows(config, truth)
    clusters = table if table is not None and table.class_names is None else None  # a named table is for by-name
    dataset_classes = _dataset_classes(config, num_classes, clusters, matched) if DATASET in protocols else None
    by_name = _NameMapping(table, truth_names) if BY_NAME in protocols else None
    tally = _Tally(config, num_classes, truth, matched, protocols, dataset_classes, by_name)
    clustering = isinstance(dataset_classes, MiniBatchKMeans)
    columns = ["key", "status", "labels", "segments.id"] + (["segments.embedding"] if clustering else [])
    with tqdm(total=len(matched.rows), desc="evaluate", unit="img", disable=None) as bar:
        for shard, batch in iter_batches(config.output, columns, config.storage_options, positions=True, ok_only=True):
            bar.update(tally.add_batch(shard, batch))
    return tally.report()


def _num_classes(config: EvaluationConfig, names: list[str] | None) -> int:
    if names is not None and config.num_classes is not None and len(names) != config.num_classes:
        raise ValueError(f"--classes {config.num_classes} disagrees with the {len(names)} ground-truth class names given")
    return config.num_classes if config.num_classes is not None else len(names)


def _protocols(config: EvaluationConfig, table: ClassTable | None, truth_names: list[str] | None) -> tuple[str, ...]:
    named = table is not None and table.class_names is not None
    if config.protocols is not None:
        if BY_NAME in config.protocols and not (named and truth_names):
            raise ValueError(f"{BY_NAME} needs a named class table (--clusters DIR from `emerdiff name`) and the ground "
                             "truth's class names (--gt-mapping or --gt-names)")
        return config.protocols
    if named and not truth_names:
        logger.warning("--clusters %s has class names but the ground truth has none: pass --gt-mapping or --gt-names "
                       "to score it %s", config.clusters, BY_NAME)
    return (PER_IMAGE, DATASET, BY_NAME) if named and truth_names else (PER_IMAGE, DATASET)


def ground_truth_names(config: EvaluationConfig) -> list[str] | None:
    """The ground truth's class names in class-id order, when a mapping or a names file gives them."""
    if config.gt_mapping is not None:
        return list(GT_MAPPINGS[config.gt_mapping][1])
    if config.gt_names is not None:
        names = read_list_file(config.gt_names, config.storage_options, what="ground-truth names file",
                               flag="--gt-names", entries="class names")
        repeated = [name for name, count in Counter(name_key(n) for n in names).items() if count > 1]
        if repeated:
            raise ValueError(f"--gt-names {config.gt_names} names {repeated[0]!r} twice; each class needs its own name")
        return names
    return None


# -- which rows have ground truth ---------------------------------------------------------------------


def read_ground_truth(url: str, storage_options: dict) -> dict[SampleId, bytes]:
    """(shard name, key, occurrence) -> ground-truth PNG bytes from every shard the URL names (held
    compressed in memory)."""
    truth: dict[SampleId, bytes] = {}
    shards = ground_truth_shards(url, storage_options)
    for shard in tqdm(shards, desc="reading ground truth", unit="shard", disable=None):
        identify = _Occurrences(shard_name(shard))
        for sample in ShardStream(shard, storage_options):
            sample_id = identify(sample["__key__"])
            if GROUND_TRUTH_MEMBER in sample:
                truth[sample_id] = sample[GROUND_TRUTH_MEMBER]
    if not truth:
        raise ValueError(f"no sample in {url} has a {GROUND_TRUTH_MEMBER}; make the shards with `emerdiff make-shards --gt`")
    return truth


class _Occurrences:
    """The SampleIds of one shard's samples, asked in shard order: a key's n-th sample is occurrence n - 1."""

    def __init__(self, shard: str):
        self.shard = shard
        self.seen: Counter = Counter()

    def __call__(self, key: str) -> SampleId:
        self.seen[key] += 1
        return self.shard, key, self.seen[key] - 1


def ground_truth_shards(url: str, storage_options: dict) -> list[str]:
    """The shards ``url`` names: a folder's ``*.tar`` files, a glob, a brace pattern or one shard."""
    try:
        return expand_shards([url], storage_options, folders=True)
    except FileNotFoundError as error:
        raise ValueError(f"ground truth {error}") from None


@dataclasses.dataclass
class MatchedRows:
    rows: dict[tuple[str, int], SampleId]  # (shard, row) of every ok row with ground truth -> its sample
    error_rows: int  # rows with ground truth whose labelling failed
    without_truth: int  # ok rows without ground truth
    unlabelled: int  # ground-truth samples with no row

    def has_truth(self, shard: str, batch) -> np.ndarray:
        """Which rows of a batch (with ROW positions) are matched to ground truth."""
        return np.array([(shard, row) in self.rows for row in batch.column(ROW).to_pylist()], dtype=bool)


def match_rows(config: EvaluationConfig, truth: dict[SampleId, bytes]) -> MatchedRows:
    """Pair the output's rows with ground-truth samples, reading only keys and statuses."""
    matched = MatchedRows(rows={}, error_rows=0, without_truth=0, unlabelled=0)
    seen = set()
    identify = None
    for shard, batch in iter_batches(config.output, ["key", "status"], config.storage_options, positions=True):
        if identify is None or identify.shard != shard:
            identify = _Occurrences(shard)
        for key, status, row in zip(*(batch.column(name).to_pylist() for name in ("key", "status", ROW))):
            sample = identify(key)
            if sample not in truth:
                matched.without_truth += status == STATUS_OK
            elif status != STATUS_OK:
                matched.error_rows += 1
                seen.add(sample)
            else:
                matched.rows[(shard, row)] = sample
                seen.add(sample)
    matched.unlabelled = len(truth) - len(seen)
    if not matched.rows:
        raise ValueError(f"no ok row of {config.output} has ground truth in {config.ground_truth}: were both made from "
                         "the same shards? (rows and samples match by shard name and key)")
    return matched


# -- scoring ------------------------------------------------------------------------------------------


def _dataset_classes(config: EvaluationConfig, num_classes: int, table: ClassTable | None, matched: MatchedRows):
    """What gives dataset-hungarian its classes: the class table, else a k-means of the scored rows' segments."""
    if table is not None:
        if table.num_classes < num_classes:
            raise ValueError(f"the class table {config.clusters} has {table.num_classes} classes, fewer than the "
                             f"{num_classes} ground-truth classes; cluster into at least {num_classes}")
        return table
    kmeans = KMeansConfig(num_clusters=num_classes, seed=config.seed, epochs=config.kmeans_epochs, device=config.device)
    return fit_classes(config.output, kmeans, config.storage_options, wanted=matched.has_truth)


class _NameMapping:
    """by-name: class table ids -> ground-truth ids by name; names the ground truth lacks -> one "wrong" id."""

    def __init__(self, table: ClassTable, truth_names: list[str]):
        truth_ids = {name_key(name): index for index, name in enumerate(truth_names)}
        self.wrong = len(truth_names)  # the extra confusion column of every pixel that cannot be right
        self.table = table
        self.to_truth = np.full(UNKNOWN + 1, self.wrong, dtype=np.int64)
        for class_id, name in enumerate(table.class_names):
            self.to_truth[class_id] = truth_ids.get(name_key(name), self.wrong)
        self.absent = tuple(name for name in table.class_names if name_key(name) not in truth_ids)


class _Tally:
    """Counts of one evaluation, fed a record batch of ok rows (with positions) at a time."""

    def __init__(self, config: EvaluationConfig, num_classes: int, truth: dict[SampleId, bytes], matched: MatchedRows,
                 protocols: tuple[str, ...], dataset_classes: MiniBatchKMeans | ClassTable | None,
                 by_name: _NameMapping | None):
        self.config, self.num_classes, self.truth, self.matched = config, num_classes, truth, matched
        self.per_image = MatchCounts.zeros(num_classes) if PER_IMAGE in protocols else None
        self.dataset_classes, self.by_name = dataset_classes, by_name
        clusters = dataset_classes.num_classes if isinstance(dataset_classes, ClassTable) else num_classes
        self.dataset_confusion = np.zeros((num_classes, clusters), dtype=np.int64)
        self.by_name_confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.scored = 0

    def add_batch(self, shard: str, batch) -> int:
        """Score the batch's rows that have ground truth; returns how many it had."""
        segments = flatten_segments(batch)
        clusters = self._clusters(segments)
        cells = zip(batch.column("labels").to_pylist(), batch.column(ROW).to_pylist())
        scored = 0
        for index, (cell, row) in enumerate(cells):
            sample = self.matched.rows.get((shard, row))
            if sample is None:
                continue
            where = f"sample {sample[1]!r} of {shard}"
            mine = segments.row == index
            lookups = {
                DATASET: self._dataset_lookup(shard, row, segments.id[mine], None if clusters is None else clusters[mine]),
                BY_NAME: self.by_name.table.lookup(shard, row) if self.by_name is not None else None,
            }
            try:
                self._add_row(decode_label_png(cell["bytes"]), _decode_truth(self.truth[sample]), lookups, where)
            except ValueError as error:
                raise ValueError(f"{where}: {error}") from None
            scored += 1
        return scored

    def _dataset_lookup(self, shard: str, row: int, ids: np.ndarray, clusters: np.ndarray | None) -> np.ndarray | None:
        """The row's segment id -> dataset-hungarian class: from the k-means, the class table, or none."""
        if clusters is not None:
            return segment_lookup(ids, clusters)
        if isinstance(self.dataset_classes, ClassTable):
            return self.dataset_classes.lookup(shard, row)
        return None

    def _clusters(self, segments) -> np.ndarray | None:
        """The k-means class of each segment of the batch, when dataset-hungarian clusters on its own."""
        if not isinstance(self.dataset_classes, MiniBatchKMeans):
            return None
        return self.dataset_classes.predict(segments.embedding) if len(segments.id) else np.zeros(0, np.int64)

    def _add_row(self, labels: np.ndarray, ground_truth: np.ndarray, lookups: dict, where: str) -> None:
        classes, ignore = self.num_classes, self.config.ignore_index
        self.scored += 1
        if self.per_image is not None:
            self.per_image += per_image_counts(ground_truth, labels, classes, ignore)
        if lookups[DATASET] is not None:
            self.dataset_confusion += confusion_matrix(ground_truth, relabel(labels, lookups[DATASET], where), classes,
                                                       ignore, num_predicted=self.dataset_confusion.shape[1])
        if lookups[BY_NAME] is not None:
            named = self.by_name.to_truth[relabel(labels, lookups[BY_NAME], where)]
            self.by_name_confusion += confusion_matrix(ground_truth, named, classes, ignore, num_predicted=classes + 1)

    def report(self) -> EvaluationReport:
        counts = {}
        if self.per_image is not None:
            counts[PER_IMAGE] = self.per_image
        if self.dataset_classes is not None:
            counts[DATASET] = hungarian_match(self.dataset_confusion)
        if self.by_name is not None:
            counts[BY_NAME] = named_match(self.by_name_confusion)
        return EvaluationReport(
            num_classes=self.num_classes, counts=counts, num_images=self.scored,
            ground_truth_images=len(self.truth), error_rows=self.matched.error_rows,
            unlabelled=self.matched.unlabelled, without_ground_truth=self.matched.without_truth,
            names_not_in_ground_truth=self.by_name.absent if self.by_name is not None else (),
        )


def _decode_truth(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image)
