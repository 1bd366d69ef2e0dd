"""emerdiff export: images and labels together as png, coco, hf and webdataset, read back the way
training code reads them; the file-name rule; class names; changed input shards."""

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from jobs.cli import main
from jobs.tools.export import NAME_TAKEN
from label_helpers import write_shards
from output_builder import (PROTOTYPES, build_small_output, export_name, input_member, input_sample, segmentation,
                            write_output)
from schemas.classes import UNKNOWN, ClassTableWriter

# pycocotools' own decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FORMATS = ("png", "coco", "hf", "webdataset")
NAMES = ["sky", "tree", "road"]  # the named class table: segment s has class s, segment 3 none


@pytest.fixture
def labelled(tmp_path):
    """(output URL, key -> label map) of build_small_output, labelled from input shards in tmp_path/in."""
    url = str(tmp_path / "out")
    return url, build_small_output(url, inputs=str(tmp_path / "in"))


def export(url: str, fmt: str, out: Path, *flags: str) -> dict:
    """Run the export; returns its summary, export.json."""
    assert main(["export", url, "--format", fmt, "--out", str(out), *flags]) == 0
    return json.loads((out / "export.json").read_text())


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# -- each format, images and labels ---------------------------------------------------------------


def test_png_pairs_each_image_with_its_label_map_by_relative_path(labelled, tmp_path):
    url, maps = labelled
    out = tmp_path / "png"
    summary = export(url, "png", out)
    assert sorted(str(p.relative_to(out / "ann_dir")) for p in (out / "ann_dir").rglob("*.png")) == sorted(
        f"{export_name(key)}.png" for key in maps)  # the error row has no labels to export
    for key, labels in maps.items():
        extension, data = input_member(key, labels)
        assert (out / f"img_dir/{export_name(key)}.{extension}").read_bytes() == data  # byte for byte
        assert np.array_equal(np.asarray(Image.open(out / f"ann_dir/{export_name(key)}.png")), labels)
    assert {p.suffix for p in (out / "img_dir").rglob("*.*")} == {".png", ".jpg"}  # each under its own extension
    assert (summary["rows"], summary["error_rows"], summary["skipped_rows"], summary["input_shards"]) == (5, 1, 0, 2)
    assert not (out / "classes.json").exists()  # segment ids are no classes


def test_coco_images_and_masks_round_trip_through_pycocotools(labelled, tmp_path):
    from pycocotools.coco import COCO

    url, maps = labelled
    out = tmp_path / "coco"
    summary = export(url, "coco", out)
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == len(maps)
    assert summary["annotations"] == len(coco.getAnnIds()) == sum(len(np.unique(labels)) for labels in maps.values())
    for image in coco.loadImgs(coco.getImgIds()):
        labels = maps[image["key"]]
        extension, data = input_member(image["key"], labels)
        assert image["file_name"] == f"{export_name(image['key'])}.{extension}"
        assert (out / "images" / image["file_name"]).read_bytes() == data
        assert (image["height"], image["width"]) == labels.shape
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        for annotation in annotations:
            mask = coco.annToMask(annotation)
            expected = labels == annotation["segment_id"]
            assert np.array_equal(mask.astype(bool), expected)
            assert annotation["area"] == expected.sum()
            rows, cols = np.nonzero(expected)
            assert annotation["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert annotation["category_id"] == 1
        # Together the masks tile the image exactly once.
        assert sum(coco.annToMask(a).astype(int) for a in annotations).tolist() == np.ones_like(labels).tolist()


def test_huggingface_rows_hold_the_image_and_its_labels(labelled, tmp_path):
    import datasets

    url, maps = labelled
    out = tmp_path / "hf"
    export(url, "hf", out)
    dataset = datasets.load_dataset("parquet", data_files=str(out / "data/*.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert isinstance(dataset.features["image"], datasets.Image)
    assert isinstance(dataset.features["labels"], datasets.Image)
    assert sorted(dataset["key"]) == sorted(maps)
    for row in dataset:
        labels = maps[row["key"]]
        assert np.array_equal(np.asarray(row["image"]), decoded(input_member(row["key"], labels)[1]))
        assert np.array_equal(np.asarray(row["labels"]), labels)
        assert len(row["segments"]) == row["num_segments"] == len(np.unique(labels))
        assert len(row["segments"][0]["embedding"]) == PROTOTYPES.shape[1]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/train-*.parquet" in card
    assert "| model | `tiny` |" in card and "| images labelled | 5 (1 that could not be labelled are left out) |" in card
    assert '"num_masks": 4' in card  # the method config


def test_huggingface_without_embeddings(labelled, tmp_path):
    url, _ = labelled
    export(url, "hf", tmp_path / "hf", "--no-embeddings")
    schema = pq.read_schema(next((tmp_path / "hf/data").iterdir()))
    assert schema.field("segments").type.value_type.names == ["id", "area", "bbox", "score"]
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert "embedding" not in features["segments"][0]


def test_webdataset_samples_hold_image_mask_and_description(labelled, tmp_path):
    url, maps = labelled
    out = tmp_path / "wds"
    summary = export(url, "webdataset", out, "--maxcount", "2")
    assert summary["files"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]  # 5 samples, 2 a shard
    samples = list(wds.WebDataset([str(out / name) for name in summary["files"]], shardshuffle=False))
    assert [sample["__key__"] for sample in samples] == [export_name(key) for key in ("img0", "img2", "img4", "img1", "img3")]
    for sample in samples:
        description = json.loads(sample["json"])
        key, labels = description["key"], maps[description["key"]]
        extension, data = input_member(key, labels)
        assert sample[extension] == data
        assert np.array_equal(decoded(sample["seg.png"]), labels)
        assert description["shard"] == f"{tmp_path}/in/{export_name(key).split('/')[0]}.tar"
        assert (description["width"], description["height"]) == (labels.shape[1], labels.shape[0])
        assert [segment["id"] for segment in description["segments"]] == np.unique(labels).tolist()
        for segment in description["segments"]:
            rows, cols = np.nonzero(labels == segment["id"])
            assert segment["area"] == len(rows)
            assert segment["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert segment["score"] == pytest.approx(0.25 + 0.1 * int(key[-1]))


def test_webdataset_shards_are_byte_identical_on_every_run(labelled, tmp_path):
    url, _ = labelled
    first = export(url, "webdataset", tmp_path / "one", "--maxcount", "3")["files"]
    assert first == ["shard-000000.tar", "shard-000001.tar"]
    assert export(url, "webdataset", tmp_path / "two", "--maxcount", "3")["files"] == first
    for name in first:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_no_images_exports_labels_without_reading_the_input_shards(labelled, tmp_path):
    url, maps = labelled
    for shard in (tmp_path / "in").iterdir():
        shard.unlink()  # --no-images must not need them
    for fmt in FORMATS:
        assert export(url, fmt, tmp_path / fmt, "--no-images")["images"] is False
    assert not (tmp_path / "png/img_dir").exists()
    assert len(list((tmp_path / "png/ann_dir").rglob("*.png"))) == len(maps)
    annotations = json.loads((tmp_path / "coco/annotations.json").read_text())
    assert sorted(image["file_name"] for image in annotations["images"]) == sorted(map(export_name, maps))
    assert not (tmp_path / "coco/images").exists()
    assert "image" not in pq.read_schema(next((tmp_path / "hf/data").iterdir())).names
    [sample, *_] = wds.WebDataset(str(tmp_path / "webdataset/shard-000000.tar"), shardshuffle=False)
    assert sorted(name for name in sample if not name.startswith("__")) == ["json", "seg.png"]


# -- class names ------------------------------------------------------------------------------------


def class_of(segment_id: int) -> int:
    return segment_id if segment_id < len(NAMES) else UNKNOWN


@pytest.fixture
def named_classes(labelled, tmp_path):
    """A named class table of the labelled output (as `emerdiff name` writes one): segment s is
    class s, NAMES[s]; segment 3 has no class. Returns its folder."""
    url, maps = labelled
    folder = str(tmp_path / "named")
    writer = ClassTableWriter(folder, None, len(NAMES))
    for shard, keys in (("shard-000000", ["img0", "img2", "img4"]), ("shard-000001", ["img1", "img3"])):
        ids = [np.unique(maps[key]) for key in keys]
        writer.write_shard(shard, rows=np.repeat(np.arange(len(keys)), [len(i) for i in ids]),
                           keys=[key for key, i in zip(keys, ids) for _ in i], segment_ids=np.concatenate(ids),
                           classes=np.array([class_of(s) for s in np.concatenate(ids)]),
                           scores=np.full(sum(len(i) for i in ids), 0.875, np.float32))
    writer.close("names", url, NAMES)
    return folder


def class_map(labels: np.ndarray) -> np.ndarray:
    return np.vectorize(class_of)(labels)


def test_png_with_named_classes_writes_class_maps_and_classes_json(labelled, named_classes, tmp_path):
    url, maps = labelled
    out = tmp_path / "png"
    summary = export(url, "png", out, "--clusters", named_classes)
    for key, labels in maps.items():
        assert np.array_equal(np.asarray(Image.open(out / f"ann_dir/{export_name(key)}.png")), class_map(labels))
    assert json.loads((out / "classes.json").read_text()) == {"class_names": NAMES, "ignore_index": 255}
    assert summary["class_names"] == NAMES and summary["ignore_index"] == 255


def test_coco_categories_carry_the_class_names(labelled, named_classes, tmp_path):
    from pycocotools.coco import COCO

    url, maps = labelled
    summary = export(url, "coco", tmp_path / "coco", "--clusters", named_classes)
    coco = COCO(str(tmp_path / "coco/annotations.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "sky"), (2, "tree"), (3, "road")]
    annotations = coco.loadAnns(coco.getAnnIds())
    assert all(a["category_id"] == a["segment_id"] + 1 for a in annotations)
    # Segments without a class are not annotated, and are counted.
    with_segment_3 = sum(3 in labels for labels in maps.values())
    assert summary["unknown_segments"] == with_segment_3 > 0
    assert len(annotations) == sum(len(np.unique(labels)) for labels in maps.values()) - with_segment_3


def test_huggingface_segment_classes_are_class_labels_with_the_names(labelled, named_classes, tmp_path):
    import datasets

    url, maps = labelled
    export(url, "hf", tmp_path / "hf", "--clusters", named_classes)
    dataset = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf/data/*.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    feature = dataset.features["segment_classes"].feature
    assert isinstance(feature, datasets.ClassLabel) and feature.names == NAMES
    for row in dataset:
        labels = maps[row["key"]]
        ids = [segment["id"] for segment in row["segments"]]
        assert row["segment_classes"] == [s if s < len(NAMES) else -1 for s in ids]
        assert np.array_equal(np.asarray(row["class_labels"]), class_map(labels))
    assert "| class names | 0 `sky`, 1 `tree`, 2 `road` |" in (tmp_path / "hf/README.md").read_text()


def test_webdataset_descriptions_carry_class_ids_and_names(labelled, named_classes, tmp_path):
    url, maps = labelled
    summary = export(url, "webdataset", tmp_path / "wds", "--clusters", named_classes)
    assert summary["class_names"] == NAMES
    for sample in wds.WebDataset(str(tmp_path / "wds/shard-000000.tar"), shardshuffle=False):
        description = json.loads(sample["json"])
        assert np.array_equal(decoded(sample["seg.png"]), class_map(maps[description["key"]]))
        for segment in description["segments"]:
            assert segment["class"] == class_of(segment["id"])
            assert segment["class_name"] == (NAMES[segment["id"]] if segment["id"] < len(NAMES) else "unknown")
            assert segment["class_score"] == 0.875


# -- names: repeated and unsafe keys ------------------------------------------------------------------

# (key, exported name or the reason it is skipped; None for an error row), in row order. A key
# repeats apart: a tar's consecutive members with one key are one sample.
KEYS = {
    "shard-000000": [
        ("a", "shard-000000/a"), ("dir/b", "shard-000000/dir/b"), ("a", "shard-000000/a~1"), ("a~1", NAME_TAKEN),
        ("../evil", "'.' or '..' part in key"), ("x/../../y", "'.' or '..' part in key"), ("/abs", "absolute key"),
        ("back\\slash", "backslash in key"), ("bell\x07", "control character in key"), ("", "empty key"),
        ("a.png/c", NAME_TAKEN),  # its folder a.png/ would clash with the file a.png
    ],
    # The error row takes its name too, so the next "a" is a~1 whether or not the first was labelled.
    "shard-000001": [("a", None), ("c", "shard-000001/c"), ("a", "shard-000001/a~1")],
}


@pytest.fixture
def awkward_keys(tmp_path):
    """An output whose rows have the KEYS, with input shards (unsafe keys' samples renamed: no tar
    can hold an empty key)."""
    near = {0: [1.0, 0], 1: [0, 1.0]}
    rows, samples = {}, {}
    for shard, keys in KEYS.items():
        rows[shard] = [(key, "undecodable image: broken" if name is None else segmentation([[0, 1], [1, 1]], near, num_masks=2))
                       for key, name in keys]
        samples[f"{shard}.tar"] = [input_sample(key if name and name.startswith("shard") else f"other{i}", np.eye(2, dtype=int))
                                   for i, (key, name) in enumerate(keys)]
    urls = write_shards(str(tmp_path / "in"), samples)
    write_output(str(tmp_path / "out"), rows, shard_urls=dict(zip(KEYS, urls)))
    return str(tmp_path / "out")


@pytest.mark.parametrize("fmt", ["png", "coco", "webdataset"])
def test_repeated_keys_get_numbered_names_and_unsafe_keys_are_skipped_and_counted(awkward_keys, tmp_path, fmt):
    out = tmp_path / "export"
    summary = export(awkward_keys, fmt, out)
    exported = sorted(name for keys in KEYS.values() for _, name in keys if name and name.startswith("shard"))
    if fmt == "png":
        assert sorted(str(p.relative_to(out / "ann_dir"))[:-4] for p in (out / "ann_dir").rglob("*.png")) == exported
        assert sorted(str(p.relative_to(out / "img_dir"))[:-4] for p in (out / "img_dir").rglob("*.png")) == exported
    elif fmt == "coco":
        images = json.loads((out / "annotations.json").read_text())["images"]
        assert sorted(image["file_name"][:-4] for image in images) == exported
        assert sorted(str(p.relative_to(out / "images"))[:-4] for p in (out / "images").rglob("*.png")) == exported
    else:
        assert sorted(s["__key__"] for s in wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False)) == exported
    # Nothing leaves the export folder: every file written lies inside it.
    assert all(out.resolve() in p.resolve().parents for p in out.rglob("*"))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("evil", "y.", "abs."))]
    reasons = [name for keys in KEYS.values() for _, name in keys if name and not name.startswith("shard")]
    assert summary["skipped_reasons"] == {reason: reasons.count(reason) for reason in reasons}
    assert (summary["rows"], summary["error_rows"], summary["skipped_rows"]) == (len(exported), 1, len(reasons))
    assert {"shard": "shard-000000", "row": 4, "key": "../evil", "reason": "'.' or '..' part in key"} in summary["skipped"]


# -- a missing or changed input shard -------------------------------------------------------------


def rewrite_same_size(path: Path) -> None:
    # A byte of the end-of-archive blocks: the tar still reads the same, but it is not the tar labelled.
    data = bytearray(path.read_bytes())
    data[-1] = 1
    path.write_bytes(bytes(data))


CHANGES = {
    "missing": (lambda path: path.unlink(), "does not exist"),
    "rewritten": (rewrite_same_size, "has changed since it was labelled: ETag"),
    "cut": (lambda path: path.write_bytes(path.read_bytes()[:1024]), "has changed since it was labelled: size is 1024"),
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_missing_or_changed_input_shard_is_an_error_and_leaves_nothing_half_written(labelled, tmp_path, caplog, fmt, change):
    url, _ = labelled
    out = tmp_path / "export"
    out.mkdir()
    (out / "export.json").write_text("{}")  # an earlier export's: no longer true once this one starts
    alter, message = CHANGES[change]
    alter(tmp_path / "in/shard-000001.tar")
    assert main(["export", url, "--format", fmt, "--out", str(out)]) == 2
    assert "row 0 (key 'img1') of shard shard-000001" in caplog.text and message in caplog.text
    assert not (out / "export.json").exists()
    # Files are whole or absent: no temp file left, and the files of the failed shard's stream are not there.
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]
    assert not {"annotations.json", "shard-000000.tar", "train-00001-of-00002.parquet"} & {p.name for p in out.rglob("*")}
    assert not (out / "img_dir/shard-000001").exists()


@pytest.mark.parametrize("sample, message", [
    ({"__key__": "zzz", "png": b"x"}, "sample 0 of the shard is 'zzz'"),
    ({"__key__": "img0", "txt": b"x"}, "the sample has no image member (jpg, jpeg, png, webp; it has txt)"),
])
def test_a_sample_that_is_not_the_rows_is_an_error_naming_shard_and_key(tmp_path, caplog, sample, message):
    url, shard = str(tmp_path / "out"), str(tmp_path / "in/shard-000000.tar")
    # Labelled before the shard existed here, so neither size nor ETag was recorded: the sample checks remain.
    write_output(url, {"shard-000000": [("img0", segmentation([[0, 1]], {0: [1.0], 1: [0.5]}, num_masks=2))]},
                 shard_urls={"shard-000000": shard})
    write_shards(str(tmp_path / "in"), {"shard-000000.tar": [sample]})
    assert main(["export", url, "--format", "webdataset", "--out", str(tmp_path / "wds")]) == 2
    assert f"row 0 (key 'img0') of shard shard-000000 from {shard}" in caplog.text and message in caplog.text
    assert not list((tmp_path / "wds").iterdir())


@pytest.mark.parametrize(("input_url", "message"), [
    ("https://example.com/shard-000000.tar?REDACTED", "was signed and is recorded without its signature"),
    ("pipe:cat shard-000000.tar", "is a pipe: command, which is not run again here"),
])
def test_inputs_that_cannot_be_read_again_are_refused_pointing_to_no_images(tmp_path, caplog, input_url, message):
    url = str(tmp_path / "out")
    # The markers and rows record the input as labelling did; the job's own record needs no pipe here.
    write_output(url, {"shard-000000": [("img0", segmentation([[0, 1]], {0: [1.0], 1: [0.5]}, num_masks=2))]},
                 shard_urls={"shard-000000": input_url}, inputs=[str(tmp_path / "shard-000000.tar")])
    assert main(["export", url, "--format", "png", "--out", str(tmp_path / "png")]) == 2
    assert message in caplog.text and "--no-images" in caplog.text
    assert main(["export", url, "--format", "png", "--out", str(tmp_path / "png"), "--no-images"]) == 0


@pytest.mark.parametrize("flags, message", [
    (["--format", "tiff"], "invalid choice: 'tiff'"),
    (["--format", "webdataset", "--maxcount", "0"], "maxcount must be"),
])
def test_bad_arguments_are_argument_errors(labelled, tmp_path, capsys, caplog, flags, message):
    url, _ = labelled
    try:
        status = main(["export", url, "--out", str(tmp_path / "x"), *flags])
    except SystemExit as exit_info:  # argparse refuses a choice itself
        status = exit_info.code
    assert status == 2
    assert message in capsys.readouterr().err + caplog.text
    assert not (tmp_path / "x").exists()
