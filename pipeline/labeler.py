"""Label one shard: the unit of work and output. No Ray in here, and no choice of who runs it.

    shard URL -> samples (webdataset, fsspec) -> decoded pictures (reader thread)
              -> rows (segment_batch, in order) -> data/<shard>.parquet -> _markers/<shard>.json

The Ray actors, the local loop and the tests all call ``ShardLabeler.run`` unchanged. The shard is
committed by ``pipeline.commit``: the data file becomes visible only when it is complete, and the
marker is created after it, only if absent; an attempt that fails leaves neither behind.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator

import emerdiff
from pipeline.commit import commit_shard, now
from pipeline.config import LabelJobConfig
from pipeline.decode import decode_samples
from pipeline.sources import ShardInfo, ShardStream, shard_info
from pipeline.stages import BatchSegmenter, prefetch
from pipeline.tasks import Progress, ShardTask
from pipeline.writer import ParquetShardWriter
from schemas.labels import SCHEMA_VERSION, STATUS_OK, error_reason, file_metadata, labels_schema
from schemas.layout import OutputLayout, data_file_key
from schemas.markers import ShardMarker, ShardStats
from schemas.urls import redact_url

logger = logging.getLogger(__name__)


class ShardLabeler:
    """Labels whole shards with one loaded segmenter.

    ``run(task)`` yields Progress events while it works and the ShardMarker last. Errors about one
    sample become error rows; anything that stops the shard (unreadable tar, lost store, out of
    memory) propagates after the partial data file is removed.
    """

    def __init__(self, segmenter, job: LabelJobConfig, layout: OutputLayout | None = None, clip=None):
        if segmenter.config.config_hash != job.method.config_hash:
            raise ValueError(
                f"the segmenter was loaded with config {segmenter.config.config_hash}, but the job's method config is "
                f"{job.method.config_hash}; its rows would be recorded under the wrong config"
            )
        if (clip is None) != (job.clip_model is None):
            raise ValueError(f"the job's clip_model is {job.clip_model!r} but {'a' if clip else 'no'} CLIP model was given")
        self.segmenter = segmenter
        self.clip = clip  # an emerdiff.clip.SegmentCLIP with --clip-model, else None
        self.job = job
        self.layout = layout or OutputLayout(job.output, job.storage_options)
        self.model_info = {**segmenter.model_info, **(clip.info if clip is not None else {})}
        clip_record = None if clip is None else {**clip.info, "clip_model": redact_url(job.clip_model)}
        self.schema = labels_schema(file_metadata(
            model=redact_url(job.model),
            weights_sha256=self.model_info.get("weights_sha256"),
            config=job.method.to_dict(),
            config_hash=job.method.config_hash,
            code_version=emerdiff.__version__,
            clip=clip_record,
        ), clip=clip is not None)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        for directory in (self.layout.data_dir, self.layout.markers_dir):
            self.layout.fs.makedirs(directory, exist_ok=True)  # local disks need them; stores ignore it

    def __call__(self, task: ShardTask, on_progress: Callable[[Progress], None] | None = None) -> ShardMarker:
        for event in self.run(task):
            if isinstance(event, ShardMarker):
                return event
            if on_progress is not None:
                on_progress(event)
        raise AssertionError("ShardLabeler.run ended without a marker")

    def run(self, task: ShardTask) -> Iterator[Progress | ShardMarker]:
        started, started_at = time.perf_counter(), now()
        info = shard_info(task.url, self.job.storage_options)
        stream = ShardStream(task.url, self.job.storage_options)
        decoded = prefetch(decode_samples(stream, self.job.image_extensions, self.job.max_image_pixels), self.job.prefetch)
        segmenter = BatchSegmenter(self.segmenter, self.job.batch_size, redact_url(task.url), self.clip)
        rows = segmenter(decoded)
        stats = ShardStats()
        writer = ParquetShardWriter(self.layout.fs, self.layout.data_path(task.name), self.schema, self.job.rows_per_row_group)
        try:
            for row in _timed(rows, stats):
                write_started = time.perf_counter()
                writer.write(row)
                stats.write_seconds += time.perf_counter() - write_started
                stats.count_row(row["status"] == STATUS_OK, error_reason(row["error"]) if row["error"] else None)
                if stats.rows % self.job.batch_size == 0:
                    yield Progress(task.name, task.attempt, stats.rows, stream.bytes_read, info.size)
            stats.segment_seconds = segmenter.model_seconds
            stats.read_seconds = max(stats.read_seconds - segmenter.model_seconds, 0.0)
            yield Progress(task.name, task.attempt, stats.rows, stream.bytes_read, info.size)
            write_started = time.perf_counter()
            data_bytes = writer.finish()
            stats.write_seconds += time.perf_counter() - write_started
            stats.wall_seconds = time.perf_counter() - started
            marker = commit_shard(self.layout, writer, self._marker(task, info, stats, data_bytes, started_at))
        except BaseException:
            rows.close()
            writer.abandon()
            raise
        logger.debug("shard %s done: %d rows, %d errors, %.1fs", task.name, stats.rows, stats.errors, stats.wall_seconds)
        yield marker

    def _marker(self, task: ShardTask, info: ShardInfo, stats: ShardStats, data_bytes: int, started_at: str) -> ShardMarker:
        return ShardMarker(
            shard=task.name,
            url=redact_url(task.url),
            data_file=data_file_key(task.name),
            data_bytes=data_bytes,
            input_size=info.size,
            input_etag=info.etag,
            config_hash=self.job.method.config_hash,
            model=redact_url(self.job.model),
            weights_sha256=self.model_info.get("weights_sha256"),
            schema_version=SCHEMA_VERSION,
            code_version=emerdiff.__version__,
            attempt=task.attempt,
            worker=self.worker,
            started_at=started_at,
            finished_at=now(),
            stats=stats,
        )


def _timed(rows: Iterable[dict], stats: ShardStats) -> Iterator[dict]:
    # Time spent waiting for the next row: reading + decoding (what the reader thread could not
    # hide) plus the model; the model's share is subtracted at the end.
    iterator = iter(rows)
    while True:
        waited = time.perf_counter()
        try:
            row = next(iterator)
        except StopIteration:
            return
        stats.read_seconds += time.perf_counter() - waited
        yield row
