"""Images and labels as new WebDataset shards, the format streaming training loaders read:

    DESTINATION/shard-000000.tar, shard-000001.tar, ...   --maxcount samples each, in row order
      <name>.<ext>      the image member of the input shard, byte for byte, under its extension
      <name>.seg.png    segment ids, or class ids with a class table (255: no class)
      <name>.json       key, input shard, row, width, height; per segment id, area, bbox, score
                        (+ class, class_name, class_score with a class table)

``<name>`` is ``<shard>/<key>`` (``SampleNames``). The tars carry fixed metadata (make-shards'), so
the same output gives byte-identical shards on every run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from webdataset import TarWriter

from jobs.tools.export import ExportBatch, ExportRun
from jobs.tools.image_shards import TAR_OPTIONS
from pipeline.storage import PendingFile
from pipeline.writer import PendingSink
from schemas.reading import ROW, SegmentTable, flatten_segments
from schemas.shards import shard_file_name

SHARD_PREFIX = "shard"
COLUMNS = ["shard", "width", "height", "labels", "segments.id", "segments.area", "segments.bbox", "segments.score"]
DESCRIBED = ("key", "shard", "width", "height")  # the row's columns its <name>.json repeats


def export_webdataset(run: ExportRun) -> None:
    shards = TarShards(run, run.config.maxcount)
    try:
        for batch in run.batches(COLUMNS, images=run.config.with_images):
            for sample in _samples(run, batch):
                shards.write(sample)
        run.summary.files = shards.close()
    finally:
        shards.discard()


def _samples(run: ExportRun, batch: ExportBatch) -> Iterator[dict]:
    segments = flatten_segments(batch.rows)
    columns = {name: batch.column(name) for name in (*DESCRIBED, "labels", ROW)}
    for index, name in enumerate(batch.names):
        row = columns[ROW][index]
        description = {**{field: columns[field][index] for field in DESCRIBED}, "row": row,
                       "segments": _segments(run, batch.shard, row, segments.of_row(index))}
        sample = {
            "__key__": name,
            "seg.png": run.label_png(batch.shard, row, columns["labels"][index]["bytes"]),
            "json": json.dumps(description, sort_keys=True).encode(),
        }
        if batch.images is not None:
            sample[batch.images[index].extension] = batch.images[index].data
        yield sample


def _segments(run: ExportRun, shard: str, row: int, segments: SegmentTable) -> list[dict]:
    described = [
        {"id": int(segment_id), "area": int(area), "bbox": [int(value) for value in bbox], "score": _rounded(score)}
        for segment_id, area, bbox, score in zip(segments.id, segments.area, segments.bbox, segments.score)
    ]
    if run.classes is not None:
        classes = run.segment_classes(shard, row, segments.id)
        for segment, (class_id, class_score) in zip(described, classes):
            segment.update({"class": class_id, "class_name": run.classes.class_name(class_id),
                            "class_score": _rounded(class_score)})
    return described


def _rounded(score: float | None) -> float | None:
    # Scores are float32: six digits say all they hold (0.45, not 0.44999998807907104).
    return None if score is None else round(float(score), 6)


class TarShards:
    """Samples into ``shard-000000.tar``, ... of ``maxcount`` samples each; a tar appears whole once full."""

    def __init__(self, run: ExportRun, maxcount: int):
        self.run = run
        self.maxcount = maxcount
        self.written: list[str] = []
        self._file: PendingFile | None = None
        self._sink: PendingSink | None = None
        self._tar: TarWriter | None = None
        self._count = 0

    def write(self, sample: dict) -> None:
        if self._tar is None:
            name = shard_file_name(SHARD_PREFIX, len(self.written))
            self._file = self.run.pending_file(name)
            self._sink = PendingSink(self._file)
            self._tar = TarWriter(self._sink, **TAR_OPTIONS)
            self.written.append(name)
        self._tar.write(sample)
        self._count += 1
        if self._count == self.maxcount:
            self._commit()

    def close(self) -> list[str]:
        """Commit the last shard; returns the shards' names."""
        if self._tar is not None:
            self._commit()
        return self.written

    def discard(self) -> None:
        """Drop the shard being written, if any (after an error)."""
        if self._file is not None:
            self._sink.abandoned = True  # the tar stream, closed whenever, writes nothing more
            self._file.discard()

    def _commit(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks; the file stays open
        self._file.commit()
        self._file, self._sink, self._tar, self._count = None, None, None, 0
