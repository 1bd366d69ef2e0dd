"""emerdiff evaluate on a two-image fixture scored by hand under both protocols."""

import json
import re

import pytest
from output_builder import ground_truth_folders, labelled_output
from PIL import Image

from jobs.cli import main

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
    assert main(["make-shards", images, "--output", str(tmp_path / "gt"), "--gt", truth]) == 0
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
