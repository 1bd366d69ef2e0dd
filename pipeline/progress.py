"""The driver's one progress bar: images (not shards) across all actors, with rate and ETA.

Shards are streamed, so the number of images is not known up front. It is estimated from bytes:
images per byte (of finished shards, or of what has been read so far) times the bytes of the
running shards and of the queued ones (at the mean size of those seen). It firms up as shards finish.

The estimate comes from running sums, so each event costs the same with 10 shards or 100,000
(recomputing it over every shard seen made a 10,000-shard job quadratic in the driver).
"""

from __future__ import annotations

import dataclasses
import sys

from tqdm import tqdm

from pipeline.tasks import Progress


@dataclasses.dataclass
class _Sums:
    """Totals over a set of shards whose size the store reported."""

    shards: int = 0
    images: int = 0
    bytes_read: int = 0
    shard_bytes: int = 0

    def add(self, progress: Progress, sign: int = 1) -> None:
        if progress.shard_bytes:  # a size of None (pipe:) or 0 says nothing about images per byte
            self.shards += sign
            self.images += sign * progress.images
            self.bytes_read += sign * progress.bytes_read
            self.shard_bytes += sign * progress.shard_bytes


class ImageProgress:
    def __init__(self, shards: int):
        interactive = sys.stderr.isatty()
        self.bar = tqdm(desc="labelling", unit="img", dynamic_ncols=True, smoothing=0.05,
                        mininterval=0.5 if interactive else 30.0, disable=shards == 0)
        self.shards = shards  # to label in this run
        self._running: dict[str, Progress] = {}  # latest event of the current attempt per unfinished shard
        self._finished = 0
        self._finished_seen = 0  # finished shards that sent progress (they count as started)
        self._running_sums = _Sums()
        self._finished_sums = _Sums()

    def update(self, event: Progress) -> None:
        previous = self._running.get(event.shard)
        seen = previous.images if previous and previous.attempt == event.attempt else 0
        if previous is not None:
            self._running_sums.add(previous, -1)
        self._running[event.shard] = event
        self._running_sums.add(event)
        self._estimate_total(self.bar.n + event.images - seen)
        self.bar.update(event.images - seen)

    def shard_finished(self, shard: str) -> None:
        self._finished += 1
        latest = self._running.pop(shard, None)
        if latest is not None:
            self._finished_seen += 1
            self._running_sums.add(latest, -1)
            self._finished_sums.add(latest)
        self.bar.set_postfix_str(f"shards {self._finished}/{self.shards}", refresh=False)

    def shard_abandoned(self, shard: str) -> None:
        """A failed attempt: its images will be labelled again (or never), so they leave the count."""
        previous = self._running.pop(shard, None)
        if previous is not None:
            self._running_sums.add(previous, -1)
            self.bar.update(-previous.images)

    def _estimate_total(self, done: int) -> None:
        finished, running = self._finished_sums, self._running_sums
        # Images per byte: exact from finished shards; until one finishes, from what has been read
        # (an underestimate while the reader thread runs ahead of the model).
        if finished.shards:
            images, read = finished.images, finished.shard_bytes
        else:
            images, read = running.images, running.bytes_read
        if read == 0:
            return
        per_byte = images / read
        # What the running shards still hold, in aggregate: a shard denser than the average
        # offsets a sparser one.
        remaining = max(running.shard_bytes * per_byte - running.images, 0)
        mean_size = (finished.shard_bytes + running.shard_bytes) / (finished.shards + running.shards)
        started = self._finished_seen + len(self._running)
        not_started = max(self.shards - started, 0) * mean_size * per_byte
        self.bar.total = max(int(round(done + remaining + not_started)), done)

    def close(self) -> None:
        self.bar.close()
