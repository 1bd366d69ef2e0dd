"""emerdiff evaluate on a two-image fixture scored by hand under both protocols."""

import json
import re

import numpy as np
import pytest
from label_helpers import write_shards
from output_builder import A, B, ground_truth_folders, labelled_output, png, segmentation, write_output
from PIL import Image

from jobs.cli import main
from schemas.classes import UNKNOWN, ClassTableWriter

# The output (see output_builder.labelled_output), scored by hand:
# per-image-hungarian:
#   a: perfect, TP (4, 4).
#   b: class 0 = {seg 2: 4, seg 3: 1}, class 1 = {seg 3: 3}; pairing 0-2, 1-3:
#      TP (4, 3), FP (0, 1), FN (1, 0).
#   Sum: TP (8, 7), FP (0, 1), FN (1, 0) -> IoU 8/9 and 7/8; accuracy 15/16.
PER_IMAGE_MIOU = (8 / 9 + 7 / 8) / 2 * 100  # 88.19
PER_IMAGE_ACCURACY = 15 / 16 * 100  # 93.75
# dataset-hungarian: embeddings A -> cluster x, B -> cluster y, so a = (x, y) and b = (x, x).
#   Confusion over both images: class 0 = {x: 4 + 5}, class 1 = {x: 3, y: 4}; pairing 0-x, 1-y:
#   TP (9, 4), FP (3, 0), FN (0, 3) -> IoU 9/12 and 4/7; accuracy 13/16.
DATASET_MIOU = (9 / 12 + 4 / 7) / 2 * 100  # 66.07
DATASET_ACCURACY = 13 / 16 * 100  # 81.25


def ground_truth_shards(tmp_path) -> str:
    images, truth = ground_truth_folders(tmp_path)
    assert main(["make-shards", images, "--output", str(tmp_path / "gt"), "--gt", truth, "--maxcount", "2"]) == 0
    return str(tmp_path / "gt")


def test_hand_computed_scores_for_both_protocols(tmp_path, capsys):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "out"), "--gt", gt, "--classes", "2", "--json", str(report)]) == 0
    scores = json.loads(report.read_text())
    per_image, dataset = scores["protocols"]["per-image-hungarian"], scores["protocols"]["dataset-hungarian"]
    assert per_image["mIoU"] == pytest.approx(PER_IMAGE_MIOU)
    assert per_image["pixel_accuracy"] == pytest.approx(PER_IMAGE_ACCURACY)
    assert dataset["mIoU"] == pytest.approx(DATASET_MIOU)
    assert dataset["pixel_accuracy"] == pytest.approx(DATASET_ACCURACY)
    assert per_image["num_images"] == dataset["num_images"] == 2
    assert (scores["error_rows"], scores["unlabelled"], scores["without_ground_truth"]) == (1, 1, 1)
    printed = capsys.readouterr().out
    assert re.search(r"^per-image-hungarian +88\.19 +93\.75 +2 +2$", printed, re.MULTILINE)
    assert re.search(r"^dataset-hungarian +66\.07 +81\.25 +2 +2$", printed, re.MULTILINE)


def test_one_protocol_on_request(tmp_path):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "out"), "--gt", gt, "--classes", "2",
                 "--protocol", "per-image-hungarian", "--json", str(report)]) == 0
    assert list(json.loads(report.read_text())["protocols"]) == ["per-image-hungarian"]


def test_too_few_classes_is_reported_with_the_flag_to_fix(tmp_path, caplog):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    assert main(["evaluate", str(tmp_path / "out"), "--gt", gt, "--classes", "1", "--protocol", "per-image-hungarian"]) == 2
    assert "class ids [1]" in caplog.text and "--classes" in caplog.text


def test_shards_without_ground_truth_are_refused(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (4, 2)).save(images / "a.png")
    assert main(["make-shards", str(images), "--output", str(tmp_path / "plain")]) == 0
    labelled_output(str(tmp_path / "out"))
    assert main(["evaluate", str(tmp_path / "out"), "--gt", str(tmp_path / "plain"), "--classes", "2"]) == 2
    assert "make-shards --gt" in caplog.text


# -- by name ----------------------------------------------------------------------------------------
# A named class table for the same output: a = (sky, tree) right; b's left half is sky (right), its
# right half "car", a name the ground truth (sky, tree) lacks, so those 4 pixels are wrong.
#   TP (8, 4), FP (0, 0), FN (1, 3) -> IoU 8/9 and 4/7; accuracy 12/16.
BY_NAME_MIOU = (8 / 9 + 4 / 7) / 2 * 100  # 73.02
BY_NAME_ACCURACY = 12 / 16 * 100


def named_table(folder) -> str:
    writer = ClassTableWriter(str(folder), None, num_classes=3)
    writer.write_shard("shard-000000", rows=[0, 0, 1, 1], keys=["a", "a", "b", "b"], segment_ids=[0, 1, 2, 3],
                       classes=[1, 0, 1, 2], scores=[0.9, 0.8, 0.7, 0.6])
    writer.write_shard("shard-000001", rows=[1, 1], keys=["e", "e"], segment_ids=[0, 1], classes=[UNKNOWN, 0])
    writer.close("names", "out", ["tree", "sky", "car"])
    return str(folder)


def test_a_named_class_table_is_scored_by_name_next_to_per_image(tmp_path, capsys):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    names = tmp_path / "names.txt"
    names.write_text("# ground truth classes\nSky\ntree \n")  # compared trimmed and in lower case
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "out"), "--gt", gt, "--gt-names", str(names), "--clusters",
                 named_table(tmp_path / "named"), "--json", str(report)]) == 0
    scores = json.loads(report.read_text())["protocols"]
    assert list(scores) == ["per-image-hungarian", "dataset-hungarian", "by-name"]  # --classes comes from the names
    assert scores["by-name"]["mIoU"] == pytest.approx(BY_NAME_MIOU)
    assert scores["by-name"]["pixel_accuracy"] == pytest.approx(BY_NAME_ACCURACY)
    assert scores["by-name"]["names_not_in_ground_truth"] == ["car"]
    assert scores["per-image-hungarian"]["mIoU"] == pytest.approx(PER_IMAGE_MIOU)
    printed = capsys.readouterr().out
    assert re.search(r"^by-name +73\.02 +75\.00 +2 +2$", printed, re.MULTILINE)
    assert "names it lacks: car" in printed and "count as wrong" in printed


def test_by_name_needs_names_on_both_sides(tmp_path, caplog):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    argv = ["evaluate", str(tmp_path / "out"), "--gt", gt, "--classes", "2", "--protocol", "by-name"]
    assert main([*argv, "--clusters", named_table(tmp_path / "named")]) == 2  # no ground-truth names
    assert "--gt-mapping or --gt-names" in caplog.text


def test_a_cluster_table_gives_dataset_hungarian_its_classes(tmp_path):
    gt = ground_truth_shards(tmp_path)
    labelled_output(str(tmp_path / "out"))
    # The clustering the k-means finds by itself (see DATASET_MIOU), written as a table.
    writer = ClassTableWriter(str(tmp_path / "clusters"), None, num_classes=2)
    writer.write_shard("shard-000000", rows=[0, 0, 1, 1], keys=["a", "a", "b", "b"], segment_ids=[0, 1, 2, 3],
                       classes=[1, 0, 1, 1])
    writer.close("clusters", "out", None)
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "out"), "--gt", gt, "--classes", "2", "--clusters", str(tmp_path / "clusters"),
                 "--protocol", "dataset-hungarian", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["protocols"]["dataset-hungarian"]["mIoU"] == pytest.approx(DATASET_MIOU)


# -- which row is which sample ------------------------------------------------------------------------


def test_rows_match_ground_truth_by_shard_key_and_occurrence(tmp_path):
    # "x" is in both shards and heads two samples of the first: three rows, three different truths.
    # Each row predicts its own truth exactly, so any mix-up (matching by key alone) costs accuracy.
    truths = {("s0", 0): [[0, 0, 1, 1]], ("s0", 1): [[1, 1, 1, 1]], ("s0", 2): [[0, 1, 1, 1]], ("s1", 0): [[1, 0, 0, 0]]}
    keys = {("s0", 0): "x", ("s0", 1): "y", ("s0", 2): "x", ("s1", 0): "x"}
    shards = {}
    for (shard, index), truth in truths.items():
        shards.setdefault(f"{shard}.tar", []).append({"__key__": keys[(shard, index)], "seg.png": png(truth)})
    write_shards(str(tmp_path / "gt"), shards)
    rows = {shard: [] for shard in ("s0", "s1")}
    for (shard, index), truth in truths.items():
        prediction = np.array(truth)
        rows[shard].append((keys[(shard, index)], segmentation(prediction, {0: A, 1: B})))
    write_output(str(tmp_path / "out"), rows)
    report = tmp_path / "scores.json"
    assert main(["evaluate", str(tmp_path / "out"), "--gt", str(tmp_path / "gt"), "--classes", "2",
                 "--protocol", "per-image-hungarian", "--json", str(report)]) == 0
    scores = json.loads(report.read_text())
    assert scores["protocols"]["per-image-hungarian"]["pixel_accuracy"] == 100.0
    assert scores["protocols"]["per-image-hungarian"]["num_images"] == 4
