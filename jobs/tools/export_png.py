"""Images and label maps as two folders of files, mmsegmentation's layout:

    DESTINATION/img_dir/<name>.<ext>   the image member of the input shard, byte for byte
    DESTINATION/ann_dir/<name>.png     its label map: segment ids, or classes with a class table
    DESTINATION/classes.json           with a class table: class names in id order, the ignore value

``<name>`` is ``<shard>/<key>`` (``SampleNames``); mmsegmentation and detectron2 pair an image with
its map by that relative path. ``--no-images`` writes ``ann_dir/`` alone.
"""

from __future__ import annotations

import json

from fsspec.core import url_to_fs

from jobs.tools.export import ExportRun
from schemas.classes import UNKNOWN
from schemas.reading import ROW
from schemas.urls import options_for

ANNOTATION_DIR = "ann_dir"
IMAGE_DIR = "img_dir"
CLASSES_FILE = "classes.json"


def export_png(run: ExportRun) -> None:
    if run.classes is not None and not _is_class_table_folder(run):
        class_list = {"class_names": run.class_names(), "ignore_index": UNKNOWN}
        run.write_files({CLASSES_FILE: json.dumps(class_list, indent=1).encode()})
    for batch in run.batches(["labels"], images=run.config.with_images):
        files = {}
        cells = zip(batch.names, batch.column("labels"), batch.column(ROW))
        for index, (name, cell, row) in enumerate(cells):
            files[f"{ANNOTATION_DIR}/{name}.png"] = run.label_png(batch.shard, row, cell["bytes"])
            if batch.images is not None:
                image = batch.images[index]
                files[f"{IMAGE_DIR}/{name}.{image.extension}"] = image.data
        run.write_files(files)


def _is_class_table_folder(run: ExportRun) -> bool:
    # `emerdiff cluster --png` exports into the class table's own folder, whose classes.json already
    # describes the classes (and must not be overwritten).
    options = options_for(run.config.clusters, run.config.storage_options)
    fs, root = url_to_fs(run.config.clusters, **options)
    return type(fs) is type(run.fs) and root.rstrip("/") == run.root
