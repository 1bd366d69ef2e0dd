"""emerdiff export: PNG folders, COCO with RLE masks, a Hugging Face dataset."""

import json

import numpy as np
import pytest
from output_builder import PROTOTYPES
from PIL import Image

from jobs.cli import main

# pycocotools' own decode trips numpy 2's copy-keyword deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def class_of(segment_id: int) -> int:
    # In the shared output, segment i's embedding lies near prototype i % 3.
    return segment_id % 3


def test_png_folder_holds_every_ok_row_as_is(small_output, tmp_path):
    url, maps = small_output
    assert main(["export", url, "--format", "png", "--out", str(tmp_path / "png")]) == 0
    written = sorted(p.stem for p in (tmp_path / "png/ann_dir").iterdir())
    assert written == sorted(maps)  # the error row has no labels to export
    for key, labels in maps.items():
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"png/ann_dir/{key}.png")), labels)


def test_coco_round_trips_through_pycocotools(small_output, tmp_path):
    from pycocotools.coco import COCO

    url, maps = small_output
    assert main(["export", url, "--format", "coco", "--out", str(tmp_path / "coco")]) == 0
    coco = COCO(str(tmp_path / "coco/annotations.json"))
    assert len(coco.getImgIds()) == len(maps)
    assert len(coco.getAnnIds()) == sum(len(np.unique(labels)) for labels in maps.values())
    for image in coco.loadImgs(coco.getImgIds()):
        labels = maps[image["file_name"]]
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


def test_huggingface_dataset_loads_with_labels_as_images(small_output, tmp_path):
    import datasets

    url, maps = small_output
    out = tmp_path / "hf"
    assert main(["export", url, "--format", "hf", "--out", str(out)]) == 0
    dataset = datasets.load_dataset("parquet", data_files=str(out / "data/*.parquet"), split="train",
                                    cache_dir=str(tmp_path / "cache"))
    assert isinstance(dataset.features["labels"], datasets.Image)
    assert sorted(dataset["key"]) == sorted(maps)
    for row in dataset:
        assert np.array_equal(np.asarray(row["labels"]), maps[row["key"]])
        assert len(row["segments"]) == row["num_segments"] == len(np.unique(maps[row["key"]]))
        assert len(row["segments"][0]["embedding"]) == PROTOTYPES.shape[1]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "path: data/train-*.parquet" in card
    assert "| model | `tiny` |" in card and "| images labelled | 5 (1 that could not be labelled are left out) |" in card
    assert '"num_masks": 4' in card  # the method config


def test_huggingface_without_embeddings(small_output, tmp_path):
    import pyarrow.parquet as pq

    url, _ = small_output
    assert main(["export", url, "--format", "hf", "--out", str(tmp_path / "hf"), "--no-embeddings"]) == 0
    schema = pq.read_schema(next((tmp_path / "hf/data").iterdir()))
    assert schema.field("segments").type.value_type.names == ["id", "area", "bbox", "score"]
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert "embedding" not in features["segments"][0]


def test_exports_with_dataset_wide_classes(small_output, tmp_path):
    from pycocotools.coco import COCO

    url, maps = small_output
    classes = tmp_path / "classes"
    assert main(["cluster", url, "--classes", "3", "--out", str(classes)]) == 0
    assert main(["export", url, "--format", "png", "--out", str(tmp_path / "png"), "--clusters", str(classes)]) == 0
    assert main(["export", url, "--format", "coco", "--out", str(tmp_path / "coco"), "--clusters", str(classes)]) == 0
    # Cluster ids are an arbitrary permutation of the prototypes: recover it from one image.
    first = next(iter(maps))
    relabelled = np.asarray(Image.open(tmp_path / f"png/ann_dir/{first}.png"))
    permutation = {class_of(int(s)): int(c) for s, c in zip(maps[first].ravel(), relabelled.ravel())}
    for key, labels in maps.items():
        expected = np.vectorize(lambda s: permutation[class_of(s)])(labels)
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"png/ann_dir/{key}.png")), expected)
    coco = COCO(str(tmp_path / "coco/annotations.json"))
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3]
    for annotation in coco.loadAnns(coco.getAnnIds()):
        assert annotation["category_id"] == permutation[class_of(annotation["segment_id"])] + 1


def test_unknown_format_is_an_argument_error(small_output, tmp_path, capsys):
    url, _ = small_output
    with pytest.raises(SystemExit) as exit_info:
        main(["export", url, "--format", "tiff", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tiff'" in capsys.readouterr().err
