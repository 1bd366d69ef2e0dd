"""Every tool on an S3 store (a moto server): same results as on local disk."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import s3fs
import webdataset as wds
from PIL import Image

from jobs.cli import main
from output_builder import build_small_output, export_name, ground_truth_folders, input_member, labelled_output


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


def test_exports_from_s3_to_s3(s3, s3_storage_options, tmp_path):
    """Input shards, output and exports all on the store: every format holds each image with its labels."""
    from pycocotools.coco import COCO

    bucket, options, fs = s3
    maps = build_small_output(f"{bucket}/out", s3_storage_options, inputs=f"{bucket}/in")
    for fmt in ("png", "coco", "hf", "webdataset"):
        assert main(["export", f"{bucket}/out", "--format", fmt, "--out", f"{bucket}/{fmt}", *options]) == 0
        assert json.loads(fs.cat_file(f"{bucket}/{fmt}/export.json"))["rows"] == len(maps)
    members = {key: input_member(key, labels) for key, labels in maps.items()}
    for key, labels in maps.items():
        extension, data = members[key]
        assert fs.cat_file(f"{bucket}/png/img_dir/{export_name(key)}.{extension}") == data
        assert np.array_equal(np.asarray(Image.open(fs.open(f"{bucket}/png/ann_dir/{export_name(key)}.png"))), labels)
        assert fs.cat_file(f"{bucket}/coco/images/{export_name(key)}.{extension}") == data
    fs.get(f"{bucket}/coco/annotations.json", str(tmp_path / "annotations.json"))
    assert sorted(image["file_name"] for image in COCO(str(tmp_path / "annotations.json")).dataset["images"]) == sorted(
        f"{export_name(key)}.{members[key][0]}" for key in maps)
    rows = []
    for data_file in fs.glob(f"{bucket}/hf/data/*.parquet"):
        with fs.open(data_file) as file:
            rows += pq.read_table(file, columns=["key", "image"]).to_pylist()
    assert {row["key"]: row["image"]["bytes"] for row in rows} == {key: data for key, (_, data) in members.items()}
    fs.get(f"{bucket}/webdataset/shard-000000.tar", str(tmp_path / "shard-000000.tar"))
    samples = list(wds.WebDataset(str(tmp_path / "shard-000000.tar"), shardshuffle=False))
    assert sorted(sample["__key__"] for sample in samples) == sorted(map(export_name, maps))
    for sample in samples:
        key = json.loads(sample["json"])["key"]
        assert sample[members[key][0]] == members[key][1]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sample["seg.png"]))), maps[key])


def test_an_input_shard_rewritten_on_s3_is_an_error_by_its_etag(s3, s3_storage_options, caplog):
    bucket, options, fs = s3
    build_small_output(f"{bucket}/out", s3_storage_options, inputs=f"{bucket}/in")
    tar = bytearray(fs.cat_file(f"{bucket}/in/shard-000000.tar"))
    tar[-1] = 1  # a byte of the end-of-archive blocks: same size, same samples, another object
    fs.pipe_file(f"{bucket}/in/shard-000000.tar", bytes(tar))
    assert main(["export", f"{bucket}/out", "--format", "webdataset", "--out", f"{bucket}/wds", *options]) == 2
    assert "row 0 (key 'img0') of shard shard-000000" in caplog.text and "since it was labelled: ETag" in caplog.text
    assert not fs.exists(f"{bucket}/wds/shard-000000.tar") and not fs.exists(f"{bucket}/wds/export.json")


def test_cluster_and_inspect_on_s3(s3, s3_storage_options, tmp_path, capsys):
    bucket, options, fs = s3
    maps = build_small_output(f"{bucket}/out", s3_storage_options)
    assert main(["cluster", f"{bucket}/out", "--classes", "3", "--out", f"{bucket}/classes", "--png", *options]) == 0
    with fs.open(f"{bucket}/classes/segment_classes.parquet") as file:
        assert pq.read_table(file).num_rows == sum(len(np.unique(labels)) for labels in maps.values())
    assert len(fs.glob(f"{bucket}/classes/ann_dir/*/*.png")) == len(maps)
    assert main(["inspect", f"{bucket}/out", "--json", str(tmp_path / "summary.json"), *options]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows"] == {"total": 6, "ok": 5, "error": 1} and summary["shards"]["done"] == 2
    assert f"output     {bucket}/out (complete)" in capsys.readouterr().out
