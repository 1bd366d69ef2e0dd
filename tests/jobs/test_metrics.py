"""The matching metrics on label maps small enough to score by hand; each test shows the arithmetic."""

import numpy as np
import pytest

from jobs.tools.metrics import MatchCounts, confusion_matrix, hungarian_match, per_image_counts

IGNORE = 255


def test_per_image_matching_by_hand():
    truth = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 2]])
    segments = np.array([[5, 5, 5, 7],
                         [5, 5, 7, 7]])
    counts = per_image_counts(truth, segments, num_classes=3, ignore_index=IGNORE)
    # Overlaps: class 0 = {seg 5: 4}; class 1 = {seg 5: 1, seg 7: 2}; class 2 = {seg 7: 1}.
    # Best pairing: 0-5 (4) + 1-7 (2) = 6; class 2 gets an empty id (0 overlap).
    # Class 0: TP 4, FP 1 (seg 5's class-1 pixel), FN 0 -> IoU 4/5.
    # Class 1: TP 2, FP 1 (seg 7's class-2 pixel), FN 1 -> IoU 2/4.
    # Class 2: TP 0, FP 0, FN 1 -> IoU 0/1.
    assert counts.true_positive.tolist() == [4, 2, 0]
    assert counts.false_positive.tolist() == [1, 1, 0]
    assert counts.false_negative.tolist() == [0, 1, 1]
    assert counts.mean_iou == pytest.approx((4 / 5 + 2 / 4 + 0) / 3 * 100)  # 43.33
    assert counts.pixel_accuracy == pytest.approx(6 / 8 * 100)  # 75.0


def test_ignored_pixels_count_nowhere():
    truth = np.array([[IGNORE, 0, 1, 1],
                      [0, 0, 1, IGNORE]])
    segments = np.array([[5, 5, 5, 7],
                         [5, 5, 7, 7]])
    counts = per_image_counts(truth, segments, num_classes=3, ignore_index=IGNORE)
    # 6 pixels count. Class 0 = {seg 5: 3}; class 1 = {seg 5: 1, seg 7: 2}; class 2 has no pixel.
    # Class 0: TP 3, FP 1 -> 3/4. Class 1: TP 2, FP 0 (seg 7's other pixel is ignored), FN 1 -> 2/3.
    # Class 2: 0/0, undefined, so left out of the mean.
    assert counts.pixels == 6
    assert np.isnan(counts.iou[2])
    assert counts.mean_iou == pytest.approx((3 / 4 + 2 / 3) / 2 * 100)  # 70.83
    assert counts.pixel_accuracy == pytest.approx(5 / 6 * 100)  # 83.33


def test_absent_class_is_charged_with_the_leftover_segment():
    # DiffSeg's protocol pairs every class, present or not, with some id: the image holds only
    # class 0, so seg 1 ends up paired with class 1 or 2 and its pixel is that class's false positive.
    truth = np.zeros((2, 2), dtype=np.uint8)
    segments = np.array([[0, 0],
                         [0, 1]])
    counts = per_image_counts(truth, segments, num_classes=3, ignore_index=IGNORE)
    # Class 0: TP 3, FN 1 -> 3/4. One absent class: FP 1 -> 0/1 = 0. The other: 0/0, left out.
    # mIoU = (3/4 + 0) / 2 whichever absent class takes seg 1; accuracy = 3/4.
    assert counts.true_positive.tolist() == [3, 0, 0]
    assert sorted(counts.false_positive.tolist()[1:]) == [0, 1]
    assert counts.mean_iou == pytest.approx((3 / 4 + 0) / 2 * 100)  # 37.5
    assert counts.pixel_accuracy == pytest.approx(3 / 4 * 100)


def test_tie_gives_the_same_scores_whichever_pairing_wins():
    truth = np.array([[0, 0, 1, 1]])
    segments = np.array([[0, 1, 0, 1]])
    # Every segment overlaps every class by 1: both pairings reach TP 1 + 1.
    # Each class: TP 1, FP 1, FN 1 -> IoU 1/3; accuracy 2/4.
    for ids in (segments, 1 - segments):  # the same segmentation with its ids swapped
        counts = per_image_counts(truth, ids, num_classes=2, ignore_index=IGNORE)
        assert counts.iou.tolist() == pytest.approx([1 / 3, 1 / 3])
        assert counts.pixel_accuracy == pytest.approx(50.0)


def test_dataset_matching_sums_the_confusion_first():
    # Two images already in cluster ids 0..1; one matching over their summed confusion.
    first = confusion_matrix(np.array([[0, 0, 1, 1]]), np.array([[1, 1, 0, 0]]), 2, IGNORE, num_predicted=2)
    second = confusion_matrix(np.array([[0, 1, 1, 1]]), np.array([[1, 1, 0, 0]]), 2, IGNORE, num_predicted=2)
    # Rows = classes, columns = clusters: [[0, 2], [2, 0]] + [[0, 1], [2, 1]] = [[0, 3], [4, 1]].
    confusion = first + second
    assert confusion.tolist() == [[0, 3], [4, 1]]
    counts = hungarian_match(confusion)
    # Pairing 0-1, 1-0 scores 3 + 4 = 7 (the other, 0 + 1). Class 0: TP 3, FP 1 -> 3/4.
    # Class 1: TP 4, FP 0, FN 1 -> 4/5. mIoU 77.5, accuracy 7/8.
    assert counts.mean_iou == pytest.approx((3 / 4 + 4 / 5) / 2 * 100)
    assert counts.pixel_accuracy == pytest.approx(7 / 8 * 100)


def test_counts_add_up_over_images():
    a = MatchCounts(np.array([1, 2]), np.array([0, 1]), np.array([1, 0]), 4)
    b = MatchCounts(np.array([3, 0]), np.array([1, 0]), np.array([0, 2]), 6)
    total = a + b
    assert total.true_positive.tolist() == [4, 2] and total.pixels == 10
    # IoU 4/(4+1+1) and 2/(2+1+2); accuracy 6/10.
    assert total.mean_iou == pytest.approx((4 / 6 + 2 / 5) / 2 * 100)
    assert total.pixel_accuracy == pytest.approx(60.0)


def test_class_ids_outside_the_count_are_an_error_that_says_so():
    with pytest.raises(ValueError, match=r"class ids \[7\].*--classes"):
        per_image_counts(np.array([[0, 7]]), np.array([[0, 0]]), num_classes=3, ignore_index=IGNORE)


def test_maps_of_different_sizes_are_refused():
    with pytest.raises(ValueError, match=r"\(1, 2\).*\(2, 1\)"):
        per_image_counts(np.zeros((1, 2), int), np.zeros((2, 1), int), num_classes=2, ignore_index=IGNORE)
