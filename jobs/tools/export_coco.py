"""Segments as a COCO annotation file with RLE masks (``pycocotools``' compressed format), and the images:

    DESTINATION/images/<name>.<ext>   the image member of the input shard, byte for byte
    DESTINATION/annotations.json      images (file_name relative to images/), annotations, categories

One annotation per segment of every exported row. Without a class table all segments share
category 1 ("segment", class-agnostic masks); with one, category c + 1 is class c, named as the
table names it, and segments of no class are left out. The file is written as a stream (images,
then annotations, in two passes over the output), so the output never has to fit in memory.
``--no-images`` writes annotations.json alone, ``file_name`` then being ``<name>`` without extension.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
from pycocotools import mask as mask_utils

from jobs.tools.export import ExportRun
from schemas.classes import UNKNOWN, ClassTable
from schemas.labels import decode_label_png
from schemas.reading import ROW, SegmentTable, flatten_segments

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"


def export_coco(run: ExportRun) -> None:
    header = {
        "info": {"description": f"EmerDiff segments of {run.summary.source}"},
        "licenses": [],
        "categories": categories(run.classes),
    }
    with run.pending(ANNOTATION_FILE) as file:
        file.write((json.dumps(header)[:-1] + ', "images": [').encode())
        _write_items(file, _images(run))
        file.write(b'], "annotations": [')
        run.summary.annotations = _write_items(file, _annotations(run))
        file.write(b"]}")


def categories(classes: ClassTable | None) -> list[dict]:
    if classes is None:
        return [{"id": 1, "name": "segment", "supercategory": "segment"}]
    return [{"id": c + 1, "name": classes.class_name(c), "supercategory": "class"} for c in range(classes.num_classes)]


def _write_items(file, items: Iterator[dict]) -> int:
    count = 0
    for count, item in enumerate(items, start=1):
        file.write(((", " if count > 1 else "") + json.dumps(item)).encode())
    return count


def _images(run: ExportRun) -> Iterator[dict]:
    image_id = 0
    for batch in run.batches(["shard", "width", "height"], images=run.config.with_images, progress="export coco images"):
        columns = {name: batch.column(name) for name in ("key", "shard", "width", "height")}
        files = {}
        for index, name in enumerate(batch.names):
            image_id += 1
            file_name = name
            if batch.images is not None:
                file_name = f"{name}.{batch.images[index].extension}"
                files[f"{IMAGE_DIR}/{file_name}"] = batch.images[index].data
            yield {"id": image_id, "file_name": file_name, **{field: values[index] for field, values in columns.items()}}
        run.write_files(files)


def _annotations(run: ExportRun) -> Iterator[dict]:
    # The same rows in the same order as _images, so image ids repeat its numbering.
    image_id = annotation_id = unknown = 0
    columns = ["labels", "segments.id", "segments.area", "segments.bbox", "segments.score"]
    for batch in run.batches(columns, images=False, count=False, progress="export coco annotations"):
        segments = flatten_segments(batch.rows)
        for index, (cell, row) in enumerate(zip(batch.column("labels"), batch.column(ROW))):
            image_id += 1
            row_segments = segments.of_row(index)
            category = np.ones(len(row_segments.id), dtype=np.int64)  # class-agnostic
            if run.classes is not None:
                category = np.array([c for c, _ in run.segment_classes(batch.shard, row, row_segments.id)], np.int64) + 1
            annotated = np.flatnonzero(category != UNKNOWN + 1)
            unknown += len(category) - len(annotated)
            labels = decode_label_png(cell["bytes"])
            for annotation in _row_annotations(image_id, labels, row_segments, category, annotated):
                annotation_id += 1
                yield {"id": annotation_id, **annotation}
    if run.classes is not None:
        run.summary.unknown_segments = unknown


def _row_annotations(image_id: int, labels: np.ndarray, segments: SegmentTable, category: np.ndarray,
                     annotated: np.ndarray) -> Iterator[dict]:
    if not len(annotated):
        return
    # pycocotools encodes an (H, W, n) Fortran-ordered uint8 stack in one call.
    masks = np.asfortranarray((labels[:, :, None] == segments.id[None, None, annotated]).astype(np.uint8))
    for index, rle in zip(annotated, mask_utils.encode(masks)):
        yield {
            "image_id": image_id,
            "category_id": int(category[index]),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(segments.area[index]),
            "bbox": [int(v) for v in segments.bbox[index]],
            "iscrowd": 0,
            "score": float(segments.score[index]),
            "segment_id": int(segments.id[index]),
        }
