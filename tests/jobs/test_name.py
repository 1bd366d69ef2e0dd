"""Names for segments end to end: `label --clip-model`, then `name`, `export coco` and `evaluate` by name,
on local disk and on moto S3; and the refusals."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from emerdiff.clip import SegmentCLIP
from emerdiff.naming import UNKNOWN, Vocabulary
from emerdiff.tiny import TINY_CLIP_RESOLUTION
from jobs.cli import main, run_module
from pipeline.exit_status import ExitStatus
from schemas.labels import LABELS_SCHEMA, decode_label_png, parse_file_metadata
from schemas.reading import committed_data_files, iter_rows, read_job

# pycocotools' own decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

METHOD = ["--resolution", "128", "--num-masks", "3", "--modulation-timestep", "61", "--feature-samples", "2",
          "--kmeans-restarts", "2"]
CLIP = ["--clip-model", "tiny", "--clip-resolution", str(TINY_CLIP_RESOLUTION)]
GROUND_TRUTH_NAMES = ["left side", "right side"]


def make_dataset(folder, photos) -> tuple[str, str]:
    """Three photos and their ground truth (left half class 0, right half class 1), as image and PNG folders."""
    images, truth = folder / "images", folder / "truth"
    images.mkdir(parents=True)
    truth.mkdir()
    halves = np.zeros((64, 96), dtype=np.uint8)
    halves[:, 48:] = 1
    for name, pixels in photos.items():
        Image.fromarray(pixels).resize((96, 64)).save(images / f"{name}.jpg")
        Image.fromarray(halves).save(truth / f"{name}.png")
    return str(images), str(truth)


def label(shards: str, output: str, *flags) -> int:
    return run_module("jobs.label", ["--input", f"{shards}/shard-*.tar", "--output", output, "--executor", "local",
                                     "--model", "tiny", *METHOD, *flags])


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, photos):
    """(shards folder, output with CLIP embeddings) on local disk."""
    root = tmp_path_factory.mktemp("named")
    images, truth = make_dataset(root, photos)
    assert main(["make-shards", images, "--gt", truth, "--output", str(root / "shards"), "--maxcount", "2"]) == 0
    assert label(str(root / "shards"), str(root / "out"), *CLIP) == ExitStatus.OK
    return str(root / "shards"), str(root / "out")


def _photo(labelled, key: str) -> Image.Image:
    """The image file the shards were made from: what the labeller decoded."""
    shards, _ = labelled
    with Image.open(f"{shards}/../images/{key}.jpg") as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def clip():
    return SegmentCLIP.from_pretrained("tiny", resolution=TINY_CLIP_RESOLUTION, device="cpu")


def test_labelling_stores_each_segment_s_clip_embedding(labelled, clip, capsys):
    _, output = labelled
    rows = [row for row in iter_rows(output) if row["status"] == "ok"]
    assert len(rows) == 3
    for row in rows:
        labels = decode_label_png(row["labels"]["bytes"])
        expected = clip.segment_embeddings(_photo(labelled, row["key"]), labels, 3)
        for segment in row["segments"]:
            stored = np.asarray(segment["clip_embedding"], dtype=np.float32)
            assert stored.shape == (16,) and np.linalg.norm(stored) == pytest.approx(1.0, abs=2e-3)
            np.testing.assert_allclose(stored, expected[segment["id"]], atol=2e-3)
    record = read_job(output)["clip"]
    assert record == {"clip_model": "tiny", "clip_resolution": TINY_CLIP_RESOLUTION, "clip_dim": 16,
                      "clip_weights_sha256": clip.info["clip_weights_sha256"]}
    metadata = parse_file_metadata(pq.read_schema(committed_data_files(output)[0]))
    assert metadata["clip"]["clip_weights_sha256"] == record["clip_weights_sha256"]
    assert main(["inspect", output]) == 0
    assert f"clip       tiny at {TINY_CLIP_RESOLUTION} px" in capsys.readouterr().out


def test_without_clip_model_the_rows_are_those_of_version_1(labelled, tmp_path):
    shards, with_clip = labelled
    plain = str(tmp_path / "plain")
    assert label(shards, plain) == ExitStatus.OK
    schema = pq.read_schema(committed_data_files(plain)[0])
    assert schema.remove_metadata() == LABELS_SCHEMA  # no clip_embedding field
    assert "clip" not in parse_file_metadata(schema)
    assert read_job(plain)["config_hash"] == read_job(with_clip)["config_hash"] and read_job(plain)["clip"] is None
    # The labels themselves do not depend on CLIP.
    plain_rows = {row["key"]: row["labels"]["bytes"] for row in iter_rows(plain)}
    assert plain_rows == {row["key"]: row["labels"]["bytes"] for row in iter_rows(with_clip)}


def test_name_gives_every_segment_its_nearest_class(labelled, clip, tmp_path):
    _, output = labelled
    names = ["cat", "sofa", "wall", "sky"]
    assert main(["name", output, "--classes", ",".join(names), "--out", str(tmp_path / "named")]) == 0
    table = pq.read_table(tmp_path / "named/segment_classes.parquet").to_pylist()
    vocabulary = Vocabulary.build(clip, names)
    stored = {(r["key"], s["id"]): s["clip_embedding"] for r in iter_rows(output) if r["status"] == "ok" for s in r["segments"]}
    assert {(r["key"], r["segment_id"]) for r in table} == set(stored)
    expected, scores = vocabulary.assign(np.array([stored[(r["key"], r["segment_id"])] for r in table], dtype=np.float16))
    assert [r["class"] for r in table] == expected.tolist()
    np.testing.assert_allclose([r["score"] for r in table], scores, rtol=1e-6)
    summary = json.loads((tmp_path / "named/classes.json").read_text())
    assert summary["kind"] == "names" and summary["class_names"] == names
    assert summary["clip_model"] == "tiny" and summary["clip_weights_sha256"] == clip.info["clip_weights_sha256"]
    assert len(summary["templates"]) == 10 and summary["num_unknown"] == 0
    assert summary["segments_per_class"] == np.bincount(expected, minlength=4).tolist()


def test_min_score_and_a_bare_names_template_file(labelled, tmp_path):
    _, output = labelled
    (tmp_path / "templates.txt").write_text("{}\n")
    (tmp_path / "classes.txt").write_text("# one per line\ncat\nsofa\n")
    argv = ["name", output, "--classes", str(tmp_path / "classes.txt"), "--templates", str(tmp_path / "templates.txt")]
    assert main([*argv, "--out", str(tmp_path / "all")]) == 0
    scores = sorted(r["score"] for r in pq.read_table(tmp_path / "all/segment_classes.parquet").to_pylist())
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2  # half the segments fall below
    assert main([*argv, "--min-score", str(threshold), "--out", str(tmp_path / "named")]) == 0
    table = pq.read_table(tmp_path / "named/segment_classes.parquet").to_pylist()
    summary = json.loads((tmp_path / "named/classes.json").read_text())
    assert summary["templates"] == ["{}"] and summary["class_names"] == ["cat", "sofa"]
    assert summary["min_score"] == pytest.approx(threshold)
    unsure = [r for r in table if r["score"] < threshold]
    assert len(unsure) == len(scores) // 2 and all(r["class"] == UNKNOWN for r in unsure)
    assert all(r["class"] in (0, 1) for r in table if r["score"] >= threshold)
    assert summary["num_unknown"] == len(unsure) == summary["num_segments"] - sum(summary["segments_per_class"])


def test_coco_export_and_evaluation_use_the_names(labelled, tmp_path, capsys):
    from pycocotools.coco import COCO

    shards, output = labelled
    assert main(["name", output, "--classes", ",".join(GROUND_TRUTH_NAMES), "--out", str(tmp_path / "named")]) == 0
    assert main(["export", output, "--format", "coco", "--out", str(tmp_path / "coco"), "--clusters", str(tmp_path / "named")]) == 0
    coco = COCO(str(tmp_path / "coco/annotations.json"))
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == GROUND_TRUTH_NAMES
    (tmp_path / "gt-names.txt").write_text("\n".join(GROUND_TRUTH_NAMES))
    report = tmp_path / "scores.json"
    assert main(["evaluate", output, "--gt", shards, "--gt-names", str(tmp_path / "gt-names.txt"),
                 "--clusters", str(tmp_path / "named"), "--json", str(report)]) == 0
    scores = json.loads(report.read_text())["protocols"]
    assert list(scores) == ["per-image-hungarian", "dataset-hungarian", "by-name"]
    assert scores["by-name"]["num_images"] == 3 and 0 <= scores["by-name"]["pixel_accuracy"] <= 100
    assert scores["by-name"]["names_not_in_ground_truth"] == []
    assert "by-name" in capsys.readouterr().out


def test_the_hf_export_carries_the_clip_embeddings(labelled, tmp_path):
    import datasets

    _, output = labelled
    assert main(["export", output, "--format", "hf", "--out", str(tmp_path / "hf"), "--no-images"]) == 0
    dataset = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf/data/*.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert all(len(segment["clip_embedding"]) == 16 for row in dataset for segment in row["segments"])


def test_naming_an_output_without_embeddings_is_refused_and_writes_nothing(labelled, tmp_path, caplog):
    shards, _ = labelled
    plain = str(tmp_path / "plain")
    assert label(shards, plain) == ExitStatus.OK
    assert main(["name", plain, "--classes", "cat,dog", "--out", str(tmp_path / "named")]) == ExitStatus.USAGE
    assert "labelled without CLIP embeddings" in caplog.text and "--clip-model" in caplog.text
    assert not (tmp_path / "named").exists()


@pytest.mark.parametrize(("classes", "message"), [
    ("cat,Cat ", "class 'cat' is listed twice"),
    ("cat,,dog", "class names must not be empty (position 1)"),
    ("no-such-names.txt", "class list no-such-names.txt does not exist"),  # a file name, not a class
])
def test_a_bad_class_list_is_refused_and_writes_nothing(labelled, tmp_path, caplog, classes, message):
    _, output = labelled
    assert main(["name", output, "--classes", classes, "--out", str(tmp_path / "named")]) == ExitStatus.USAGE
    assert message in caplog.text and not (tmp_path / "named").exists()


def test_a_rerun_with_another_clip_model_is_refused_naming_the_field(labelled, tmp_path, caplog):
    shards, output = labelled
    argv = ["--clip-model", "tiny", "--clip-resolution", str(2 * TINY_CLIP_RESOLUTION)]
    assert label(shards, output, *argv) == ExitStatus.REFUSED
    assert f"clip_resolution ({TINY_CLIP_RESOLUTION} -> {2 * TINY_CLIP_RESOLUTION})" in caplog.text
    assert label(shards, output) == ExitStatus.REFUSED  # without embeddings, where the output has them
    assert "clip_model ('tiny' -> None)" in caplog.text


def test_the_whole_flow_on_s3(tmp_path, photos, s3_bucket, s3_storage_options):
    from pycocotools.coco import COCO

    fs = s3fs.S3FileSystem(**s3_storage_options)
    options = ["--storage-options", json.dumps(s3_storage_options)]
    images, truth = make_dataset(tmp_path, photos)
    fs.put(images, f"{s3_bucket}/images", recursive=True)
    fs.put(truth, f"{s3_bucket}/truth", recursive=True)
    shards, output, named = f"{s3_bucket}/shards", f"{s3_bucket}/out", f"{s3_bucket}/named"
    assert main(["make-shards", f"{s3_bucket}/images", "--gt", f"{s3_bucket}/truth", "--output", shards, "--maxcount", "2",
                 *options]) == 0
    assert label(shards, output, *CLIP, *options) == ExitStatus.OK
    assert main(["name", output, "--classes", ",".join(GROUND_TRUTH_NAMES), "--out", named, *options]) == 0
    with fs.open(f"{named}/segment_classes.parquet") as file:
        assert pq.read_table(file).num_rows == sum(len(r["segments"]) for r in iter_rows(output, storage_options=s3_storage_options)
                                                   if r["status"] == "ok")
    assert json.loads(fs.cat_file(f"{named}/classes.json"))["class_names"] == GROUND_TRUTH_NAMES
    assert main(["export", output, "--format", "coco", "--out", f"{s3_bucket}/coco", "--clusters", named, *options]) == 0
    fs.get(f"{s3_bucket}/coco/annotations.json", str(tmp_path / "annotations.json"))
    coco = COCO(str(tmp_path / "annotations.json"))
    assert [category["name"] for category in coco.loadCats(coco.getCatIds())] == GROUND_TRUTH_NAMES
    names_file = f"{s3_bucket}/gt-names.txt"
    fs.pipe_file(names_file, "\n".join(GROUND_TRUTH_NAMES).encode())
    assert main(["evaluate", output, "--gt", shards, "--gt-names", names_file, "--clusters", named,
                 "--json", f"{s3_bucket}/scores.json", *options]) == 0
    assert "by-name" in json.loads(fs.cat_file(f"{s3_bucket}/scores.json"))["protocols"]
