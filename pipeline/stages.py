"""Generator stages between decoded samples and rows: read-ahead, batched segmentation.

Each stage takes an iterator and yields; errors that concern one sample become error rows here,
errors that concern the shard or the device propagate (``pipeline.failures`` decides which is which).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from pipeline.decode import DecodedSample
from pipeline.failures import ERROR_ROW, failure_action
from schemas.labels import error_row, ok_row

logger = logging.getLogger(__name__)

SEGMENTATION_FAILED = "segmentation failed"
OUT_OF_MEMORY = "out of device memory"


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def prefetch(items: Iterable, size: int) -> Iterator:
    """Yield ``items``, produced up to ``size`` ahead by a background thread.

    Reading and decoding overlap with the model. An exception in the producer is re-raised here,
    in order; closing this generator early stops the producer.
    """
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, who decides
            put(_Raised(error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="emerdiff-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=10)


class BatchSegmenter:
    """Decoded samples in, rows out, in input order; images go to the model ``batch_size`` at a time.

    With a ``clip`` (emerdiff.clip.SegmentCLIP), each segmentation also gets its segments' CLIP
    embeddings. If a batch fails with an error ``pipeline.failures`` files as the images'
    (``ERROR_ROW``), its images are retried one by one so that a single bad image becomes one error
    row; any other error propagates and fails the shard attempt.
    """

    def __init__(self, segmenter, batch_size: int, shard_url: str, clip=None):
        self.segmenter = segmenter
        self.clip = clip
        self.batch_size = batch_size
        self.shard_url = shard_url
        self.model_seconds = 0.0

    def __call__(self, samples: Iterable[DecodedSample]) -> Iterator[dict]:
        pending: list[DecodedSample] = []
        images_pending = 0
        for sample in samples:
            pending.append(sample)
            images_pending += sample.image is not None
            if images_pending == self.batch_size:
                yield from self._rows(pending)
                pending, images_pending = [], 0
        if pending:
            yield from self._rows(pending)

    def _rows(self, samples: list[DecodedSample]) -> Iterator[dict]:
        to_segment = [s for s in samples if s.image is not None]
        outcomes, seconds = self._segment(to_segment)
        per_image = seconds / len(to_segment) if to_segment else None
        results = dict(zip((id(s) for s in to_segment), outcomes))
        for sample in samples:
            if sample.error is not None:
                yield error_row(sample.key, self.shard_url, sample.error, decode_seconds=sample.decode_seconds)
                continue
            outcome = results[id(sample)]
            if isinstance(outcome, Exception):
                yield error_row(sample.key, self.shard_url, _error_message(outcome),
                                width=sample.image.width, height=sample.image.height,
                                decode_seconds=sample.decode_seconds, segment_seconds=per_image)
            else:
                yield ok_row(sample.key, self.shard_url, outcome,
                             decode_seconds=sample.decode_seconds, segment_seconds=per_image)

    def _segment(self, samples: list[DecodedSample]) -> tuple[list, float]:
        if not samples:
            return [], 0.0
        started = time.perf_counter()
        outcomes = self._per_image(self._label, [s.image for s in samples])
        seconds = time.perf_counter() - started
        self.model_seconds += seconds
        return outcomes, seconds

    def _per_image(self, step: Callable[[list], list], inputs: list) -> list:
        """``step(inputs)``, one outcome per input: its result, or the exception that becomes its error row.

        A batch that fails with an images' error is run again one input at a time; errors that are
        not the images' (``pipeline.failures``) propagate.
        """
        try:
            return list(step(inputs))
        except Exception as error:
            if failure_action(error) != ERROR_ROW:
                raise
            if len(inputs) == 1:
                return [error]
            logger.warning("a batch of %d images in %s failed (%s); running them one by one",
                           len(inputs), self.shard_url, error)
        outcomes = []
        for item in inputs:
            try:
                outcomes.append(step([item])[0])
            except Exception as error:
                if failure_action(error) != ERROR_ROW:
                    raise
                outcomes.append(error)
        return outcomes

    def _label(self, images: list) -> list:
        """The images' segmentations, with their segments' CLIP embeddings when there is a CLIP model."""
        results = list(self.segmenter.segment_batch(images))
        if self.clip is None:
            return results
        embeddings = self.clip.segment_embeddings_batch(images, [result.labels for result in results], results[0].num_masks)
        return [result.with_clip_embeddings(clip) for result, clip in zip(results, embeddings)]


def _error_message(error: Exception) -> str:
    """The error row's "<reason>: <detail>"; the reason is what the shard's stats count."""
    reason = OUT_OF_MEMORY if isinstance(error, torch.OutOfMemoryError) else SEGMENTATION_FAILED
    return f"{reason}: {error}"
