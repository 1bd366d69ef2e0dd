"""Label maps as a folder of PNGs, ``ann_dir/<key>.png``: the layout mmsegmentation's and
detectron2's semantic-segmentation loaders read. Values are segment ids, or dataset-wide classes
when a class table (``emerdiff cluster``) is given.
"""

from __future__ import annotations

import posixpath

from fsspec.core import url_to_fs
from tqdm import tqdm

from schemas.classes import ClassTable, relabel
from schemas.labels import decode_label_png, encode_label_png
from schemas.reading import ROW, iter_batches

ANNOTATION_DIR = "ann_dir"


def export_png(output: str, destination: str, storage_options: dict, class_table: str | None = None) -> int:
    """Write one PNG per ok row; returns how many. The stored PNG is copied unless relabelled."""
    classes = ClassTable(class_table, storage_options) if class_table else None
    fs, root = url_to_fs(destination, **storage_options)
    written = 0
    with tqdm(desc="export png", unit="img", disable=None) as bar:
        for shard, batch in iter_batches(output, ["key", "labels"], storage_options, ok_only=True, positions=True):
            files = {}
            columns = (batch.column(name).to_pylist() for name in ("key", "labels", ROW))
            for key, cell, row in zip(*columns):
                data = cell["bytes"] if classes is None else _relabelled(cell["bytes"], classes, shard, row, key)
                files[f"{root}/{ANNOTATION_DIR}/{file_stem(key)}.png"] = data
            for folder in {posixpath.dirname(path) for path in files}:
                fs.makedirs(folder, exist_ok=True)  # keys with '/' become subfolders
            fs.pipe(files)  # one concurrent upload per batch on object stores
            written += len(files)
            bar.update(len(files))
    return written


def file_stem(key: str) -> str:
    """The key as a relative file name; ValueError for keys that would leave the folder."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"sample key {key!r} cannot be used as a file name inside the export folder")
    return posixpath.join(*parts)


def _relabelled(png: bytes, classes: ClassTable, shard: str, row: int, key: str) -> bytes:
    return encode_label_png(relabel(decode_label_png(png), classes.lookup(shard, row), f"row {key!r} of {shard}"))
