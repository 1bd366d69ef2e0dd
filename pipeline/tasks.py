"""What the driver and the shard labellers tell each other: a task, its progress, its outcome.

A leaf: the driver, the distributors, the labeller and the progress bar all import it, and it
imports nothing of theirs (nor torch).
"""

from __future__ import annotations

import dataclasses
import enum

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


class ExitStatus(enum.IntEnum):
    """What every ``emerdiff`` command's exit status means: one class of outcome each.

    Callers (schedulers, ``ray job submit``, CI) decide from it alone whether to rerun, fix the
    command, or fix the environment. docs/operations.md shows the same table.
    """

    OK = 0  # everything asked for is done
    PARTIAL = 1  # some shards (label) or images (segment) failed after their retries; the rest is done, a rerun retries only those
    USAGE = 2  # refused before any work: a bad flag or value, an input or model that cannot be used as given
    REFUSED = 3  # the output is not this job's to write: made with another model or config, or held by a running job
    TAKEN_OVER = 4  # another job took the output over mid-run: this one stopped without committing more
    FAILED = 5  # the job could not run: Ray did not start, actors could not load the model or kept dying
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: committed shards stay, a rerun resumes
