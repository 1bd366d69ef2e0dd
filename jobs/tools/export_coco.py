"""Segments as a COCO annotation file with RLE masks (``pycocotools``' compressed format).

One annotation per segment of every ok row. Without a class table all segments share category 1
("segment", class-agnostic masks); with one (``emerdiff cluster``), category c + 1 is class c.
``file_name`` is the sample key. The file is written as a stream (images, then annotations, in two
passes over the output), so the output never has to fit in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
from fsspec.core import url_to_fs
from pycocotools import mask as mask_utils
from tqdm import tqdm

from schemas.classes import ClassTable
from schemas.labels import decode_label_png
from schemas.reading import ROW, flatten_segments, iter_batches

ANNOTATION_FILE = "annotations.json"


def export_coco(output: str, destination: str, storage_options: dict, class_table: str | None = None) -> int:
    """Write ``DESTINATION/annotations.json``; returns the number of annotations."""
    classes = ClassTable(class_table, storage_options) if class_table else None
    fs, root = url_to_fs(destination, **storage_options)
    fs.makedirs(root, exist_ok=True)
    header = {
        "info": {"description": f"EmerDiff segments of {output}"},
        "licenses": [],
        "categories": categories(classes),
    }
    with fs.open(f"{root}/{ANNOTATION_FILE}", "w") as file:
        file.write(json.dumps(header)[:-1] + ', "images": [')
        _write_items(file, _images(output, storage_options))
        file.write('], "annotations": [')
        count = _write_items(file, _annotations(output, storage_options, classes))
        file.write("]}")
    return count


def categories(classes: ClassTable | None) -> list[dict]:
    if classes is None:
        return [{"id": 1, "name": "segment", "supercategory": "segment"}]
    return [{"id": c + 1, "name": classes.class_name(c), "supercategory": "class"} for c in range(classes.num_classes)]


def _write_items(file, items: Iterator[dict]) -> int:
    count = 0
    for count, item in enumerate(items, start=1):
        file.write((", " if count > 1 else "") + json.dumps(item))
    return count


def _images(output: str, storage_options: dict) -> Iterator[dict]:
    image_id = 0
    for _, batch in iter_batches(output, ["key", "width", "height"], storage_options, ok_only=True):
        for row in batch.to_pylist():
            image_id += 1
            yield {"id": image_id, "file_name": row["key"], "width": row["width"], "height": row["height"]}


def _annotations(output: str, storage_options: dict, classes: ClassTable | None) -> Iterator[dict]:
    # Image ids repeat _images' numbering: the same ok rows in the same order.
    image_id = annotation_id = 0
    columns = ["key", "labels", "segments.id", "segments.area", "segments.bbox", "segments.score"]
    with tqdm(desc="export coco", unit="img", disable=None) as bar:
        for shard, batch in iter_batches(output, columns, storage_options, ok_only=True, positions=True):
            segments = flatten_segments(batch)
            cells = zip(batch.column("labels").to_pylist(), batch.column(ROW).to_pylist())
            for index, (cell, row) in enumerate(cells):
                image_id += 1
                labels = decode_label_png(cell["bytes"])
                lookup = classes.lookup(shard, row) if classes is not None else None
                for annotation in _row_annotations(image_id, labels, segments.of_row(index), lookup):
                    annotation_id += 1
                    yield {"id": annotation_id, **annotation}
                bar.update(1)


def _row_annotations(image_id: int, labels: np.ndarray, segments, lookup: np.ndarray | None) -> Iterator[dict]:
    # pycocotools encodes an (H, W, n) Fortran-ordered uint8 stack in one call.
    masks = np.asfortranarray((labels[:, :, None] == segments.id[None, None, :]).astype(np.uint8))
    encoded = mask_utils.encode(masks)
    for index, rle in enumerate(encoded):
        segment_id = int(segments.id[index])
        yield {
            "image_id": image_id,
            "category_id": int(lookup[segment_id]) + 1 if lookup is not None else 1,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(segments.area[index]),
            "bbox": [int(v) for v in segments.bbox[index]],
            "iscrowd": 0,
            "score": float(segments.score[index]),
            "segment_id": segment_id,
        }
