"""What the driver and the shard labellers tell each other: a task, its progress, its outcome.

A leaf: the driver, the distributors, the labeller and the progress bar all import it, and it
imports nothing of theirs (nor torch).
"""

from __future__ import annotations

import dataclasses

from schemas.markers import ShardMarker
from schemas.shards import shard_name


@dataclasses.dataclass(frozen=True)
class ShardTask:
    url: str
    attempt: int = 1

    @property
    def name(self) -> str:
        return shard_name(self.url)

    def retry(self) -> ShardTask:
        return dataclasses.replace(self, attempt=self.attempt + 1)


@dataclasses.dataclass(frozen=True)
class Progress:
    """Cumulative for one attempt at one shard; ``shard_bytes`` is None when the store can't tell."""

    shard: str
    attempt: int
    images: int
    bytes_read: int
    shard_bytes: int | None


# -- what a distributor yields to the driver, one per finished attempt (and per loaded model) -----


@dataclasses.dataclass(frozen=True)
class WorkerReady:
    model_info: dict  # EmerDiffSegmenter.model_info plus "worker" (host:pid)


@dataclasses.dataclass(frozen=True)
class ShardDone:
    task: ShardTask
    marker: ShardMarker  # the marker that counts (another attempt's, if that one committed first)


@dataclasses.dataclass(frozen=True)
class ShardRetry:
    task: ShardTask  # the attempt that failed; the next one is queued
    error: str


@dataclasses.dataclass(frozen=True)
class ShardFailed:
    task: ShardTask  # the last attempt
    error: str


Event = WorkerReady | ShardDone | ShardRetry | ShardFailed

