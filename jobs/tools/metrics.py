"""mIoU and pixel accuracy of unsupervised segments against ground-truth classes.

Segments carry no class names, so they are first matched to classes by the Hungarian algorithm
(maximum total overlap, one segment per class). Two protocols of the field build on one matching step:

* ``per-image-hungarian`` (DiffSeg, DiffCut): one matching per image between its segment ids and the
  classes; the matched counts are summed over the dataset. This is the computation of DiffSeg's
  ``hungarian_matching`` (``google/diffseg``, ``diffseg/utils.py``), which DiffCut reuses: the
  confusion matrix has every class as a row and ``max(C, largest segment id + 1)`` columns, so a
  class absent from the image is still paired with some segment, and that segment's pixels count as
  false positives of the class.
* ``dataset-hungarian`` (STEGO): segments are first given dataset-wide cluster ids in 0..C-1, the
  confusion matrix of the whole dataset is accumulated, and one matching is made for all of it.

A third protocol needs no matching: ``by-name`` (the EmerDiff paper's open-vocabulary Table 3)
takes segments already named with the ground truth's class names (``emerdiff name``), so predicted
class c is ground-truth class c; pixels whose segment has a name the ground truth lacks, or none,
are wrong wherever they fall (``named_match``).

Either way IoU_c = TP_c / (TP_c + FP_c + FN_c); mIoU is the mean over classes whose IoU is defined
(a class never in the ground truth and never predicted has 0/0 and is left out, as STEGO and DiffSeg
do); pixel accuracy is sum(TP) / (pixels not ignored). Pixels whose ground truth is ``ignore_index``
count nowhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclasses.dataclass(frozen=True)
class MatchCounts:
    """Per-class pixel counts after a matching; addable, so images and shards can be summed."""

    true_positive: np.ndarray  # (C,) int64
    false_positive: np.ndarray  # (C,) int64
    false_negative: np.ndarray  # (C,) int64
    pixels: int  # ground-truth pixels that were not ignored

    @classmethod
    def zeros(cls, num_classes: int) -> MatchCounts:
        empty = np.zeros(num_classes, dtype=np.int64)
        return cls(empty, empty.copy(), empty.copy(), 0)

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(
            self.true_positive + other.true_positive,
            self.false_positive + other.false_positive,
            self.false_negative + other.false_negative,
            self.pixels + other.pixels,
        )

    @property
    def iou(self) -> np.ndarray:
        """(C,) IoU per class; NaN for a class with no pixel in either the truth or its match."""
        union = self.true_positive + self.false_positive + self.false_negative
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.true_positive / union

    @property
    def mean_iou(self) -> float:
        """mIoU in percent over the classes whose IoU is defined (NaN when none is)."""
        defined = self.iou[~np.isnan(self.iou)]
        return float(defined.mean() * 100) if defined.size else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        """Share of non-ignored pixels whose segment was matched to their class, in percent."""
        return float(self.true_positive.sum() / self.pixels * 100) if self.pixels else float("nan")


def confusion_matrix(
    ground_truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore_index: int, num_predicted: int | None = None
) -> np.ndarray:
    """(num_classes, P) pixel counts: row = true class, column = predicted id.

    P is ``num_predicted`` when given, else ``max(num_classes, prediction.max() + 1)`` as in DiffSeg.
    Raises ValueError when the maps differ in shape or the truth holds an id that is neither a class
    nor ``ignore_index`` (a wrong class count would otherwise go unnoticed).
    """
    if ground_truth.shape != prediction.shape:
        raise ValueError(f"ground truth is {ground_truth.shape} but the prediction is {prediction.shape}")
    valid = ground_truth != ignore_index
    truth = ground_truth[valid].astype(np.int64)
    predicted = prediction[valid].astype(np.int64)
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        stray = sorted(set(np.unique(truth[(truth < 0) | (truth >= num_classes)]).tolist()))[:5]
        raise ValueError(
            f"ground truth holds class ids {stray}, outside 0..{num_classes - 1} and not the ignore index "
            f"{ignore_index}; check the class count (--classes) and --ignore-index"
        )
    if predicted.size and predicted.min() < 0:
        raise ValueError(f"prediction holds negative ids ({int(predicted.min())})")
    columns = num_predicted if num_predicted is not None else max(num_classes, int(prediction.max(initial=-1)) + 1)
    flat = np.bincount(truth * columns + predicted, minlength=num_classes * columns)
    return flat.reshape(num_classes, columns)


def hungarian_match(confusion: np.ndarray) -> MatchCounts:
    """Counts after pairing every class (row) with one predicted id (column), maximising overlap.

    Needs at least as many columns as rows. Among equally good pairings scipy's solver picks one
    deterministically; the totals (TP sum, accuracy) never depend on which.
    """
    if confusion.shape[1] < confusion.shape[0]:
        raise ValueError(f"need at least as many predicted ids as classes, got a {confusion.shape} confusion matrix")
    # With no fewer columns than rows, every row is paired and `rows` comes back as 0..C-1.
    rows, columns = linear_sum_assignment(confusion, maximize=True)
    true_positive = confusion[rows, columns].astype(np.int64)
    false_positive = confusion[:, columns].sum(axis=0).astype(np.int64) - true_positive
    false_negative = confusion.sum(axis=1) - true_positive
    return MatchCounts(true_positive, false_positive, false_negative, int(confusion.sum()))


def per_image_counts(ground_truth: np.ndarray, segments: np.ndarray, num_classes: int, ignore_index: int) -> MatchCounts:
    """One image under ``per-image-hungarian``: its segment ids matched to the classes on their own."""
    return hungarian_match(confusion_matrix(ground_truth, segments, num_classes, ignore_index))


def named_match(confusion: np.ndarray) -> MatchCounts:
    """Counts when predicted id c is class c (ids already mapped by name); a (C, C + 1) matrix whose
    last column holds the pixels predicted as nothing the ground truth names."""
    classes = confusion.shape[0]
    if confusion.shape[1] != classes + 1:
        raise ValueError(f"expected a (C, C + 1) confusion matrix, got {confusion.shape}")
    true_positive = np.diag(confusion[:, :classes]).astype(np.int64)
    false_positive = confusion[:, :classes].sum(axis=0).astype(np.int64) - true_positive
    false_negative = confusion.sum(axis=1).astype(np.int64) - true_positive
    return MatchCounts(true_positive, false_positive, false_negative, int(confusion.sum()))
