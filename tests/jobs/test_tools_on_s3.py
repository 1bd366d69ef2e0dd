"""Every tool on an S3 store (a moto server): same results as on local disk."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from jobs.cli import main
from output_builder import build_small_output, ground_truth_folders, labelled_output


@pytest.fixture
def s3(s3_bucket, s3_storage_options):
    """(bucket URL, --storage-options flag, filesystem) for one test."""
    return s3_bucket, ["--storage-options", json.dumps(s3_storage_options)], s3fs.S3FileSystem(**s3_storage_options)


def test_make_shards_and_evaluate_on_s3(s3, s3_storage_options, tmp_path):
    bucket, options, fs = s3
    images, truth = ground_truth_folders(tmp_path)
    fs.put(images, f"{bucket}/images", recursive=True)
    fs.put(truth, f"{bucket}/truth", recursive=True)
    assert main(["make-shards", f"{bucket}/images", "--gt", f"{bucket}/truth", "--output", f"{bucket}/gt", "--maxcount", "2",
                 *options]) == 0
    assert main(["make-shards", images, "--gt", truth, "--output", str(tmp_path / "gt"), "--maxcount", "2"]) == 0
    assert fs.cat_file(f"{bucket}/gt/shard-000000.tar") == (tmp_path / "gt/shard-000000.tar").read_bytes()

    labelled_output(f"{bucket}/out", s3_storage_options)
    labelled_output(str(tmp_path / "out"))
    assert main(["evaluate", f"{bucket}/out", "--gt", f"{bucket}/gt", "--classes", "2",
                 "--json", f"{bucket}/scores.json", *options]) == 0
    assert main(["evaluate", str(tmp_path / "out"), "--gt", str(tmp_path / "gt"), "--classes", "2",
                 "--json", str(tmp_path / "scores.json")]) == 0
    assert json.loads(fs.cat_file(f"{bucket}/scores.json")) == json.loads((tmp_path / "scores.json").read_text())


def test_preview_on_s3(s3, s3_storage_options):
    bucket, options, fs = s3
    build_small_output(f"{bucket}/out", s3_storage_options)
    assert main(["preview", f"{bucket}/out", "--out", f"{bucket}/gallery.html", *options]) == 0
    page = fs.cat_file(f"{bucket}/gallery.html").decode()
    assert page.count('<article class="card">') == 5 and "cannot identify image file" in page


def test_exports_on_s3(s3, s3_storage_options, tmp_path):
    from pycocotools.coco import COCO

    bucket, options, fs = s3
    maps = build_small_output(f"{bucket}/out", s3_storage_options)
    for fmt in ("png", "coco", "hf"):
        assert main(["export", f"{bucket}/out", "--format", fmt, "--out", f"{bucket}/{fmt}", *options]) == 0
    for key, labels in maps.items():
        assert np.array_equal(np.asarray(Image.open(fs.open(f"{bucket}/png/ann_dir/{key}.png"))), labels)
    fs.get(f"{bucket}/coco/annotations.json", str(tmp_path / "annotations.json"))
    assert len(COCO(str(tmp_path / "annotations.json")).getImgIds()) == len(maps)
    [data_file] = fs.glob(f"{bucket}/hf/data/*.parquet")[:1]
    with fs.open(data_file) as file:
        assert pq.read_schema(file).metadata[b"huggingface"]
    assert fs.cat_file(f"{bucket}/hf/README.md").startswith(b"---\n")


def test_cluster_and_inspect_on_s3(s3, s3_storage_options, tmp_path, capsys):
    bucket, options, fs = s3
    maps = build_small_output(f"{bucket}/out", s3_storage_options)
    assert main(["cluster", f"{bucket}/out", "--classes", "3", "--out", f"{bucket}/classes", "--png", *options]) == 0
    with fs.open(f"{bucket}/classes/segment_classes.parquet") as file:
        assert pq.read_table(file).num_rows == sum(len(np.unique(labels)) for labels in maps.values())
    assert len(fs.glob(f"{bucket}/classes/ann_dir/*.png")) == len(maps)
    assert main(["inspect", f"{bucket}/out", "--json", str(tmp_path / "summary.json"), *options]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == {"total": 6, "ok": 5, "error": 1} and summary["shards"]["done"] == 2
    assert f"output     {bucket}/out (complete)" in capsys.readouterr().out
