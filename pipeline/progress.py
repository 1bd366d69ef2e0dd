"""The driver's one progress bar: images (not shards) across all actors, with rate and ETA.

Shards are streamed, so the number of images is not known up front. It is estimated from bytes:
images per byte (of finished shards, or of what has been read so far) times the bytes of the
running shards and of the queued ones (at the mean size of those seen). It firms up as shards finish.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from pipeline.shard import Progress


class ImageProgress:
    def __init__(self, shards: int):
        interactive = sys.stderr.isatty()
        self.bar = tqdm(desc="labelling", unit="img", dynamic_ncols=True, smoothing=0.05,
                        mininterval=0.5 if interactive else 30.0, disable=shards == 0)
        self.shards = shards  # to label in this run
        self._latest: dict[str, Progress] = {}  # current attempt per shard
        self._finished: set[str] = set()

    def update(self, event: Progress) -> None:
        previous = self._latest.get(event.shard)
        seen = previous.images if previous and previous.attempt == event.attempt else 0
        self._latest[event.shard] = event
        self._estimate_total(self.bar.n + event.images - seen)
        self.bar.update(event.images - seen)

    def shard_finished(self, shard: str) -> None:
        self._finished.add(shard)
        self.bar.set_postfix_str(f"shards {len(self._finished)}/{self.shards}", refresh=False)

    def shard_abandoned(self, shard: str) -> None:
        """A failed attempt: its images will be labelled again (or never), so they leave the count."""
        previous = self._latest.pop(shard, None)
        if previous is not None:
            self.bar.update(-previous.images)

    def _estimate_total(self, done: int) -> None:
        known = [p for p in self._latest.values() if p.shard_bytes]
        # Images per byte: exact from finished shards; until one finishes, from what has been read
        # (an underestimate while the reader thread runs ahead of the model).
        basis = [p for p in known if p.shard in self._finished] or known
        read = sum(p.shard_bytes if p.shard in self._finished else p.bytes_read for p in basis)
        if not basis or read == 0:
            return
        per_byte = sum(p.images for p in basis) / read
        running = sum(max(p.shard_bytes * per_byte - p.images, 0) for p in known if p.shard not in self._finished)
        mean_size = sum(p.shard_bytes for p in known) / len(known)
        not_started = max(self.shards - len(self._latest), 0) * mean_size * per_byte
        self.bar.total = max(int(round(done + running + not_started)), done)

    def close(self) -> None:
        self.bar.close()
