"""Failure injection for the resume tests, from outside: production code has no crash switch.

``Crash`` stops one shard after rows were written and before its commit, either by raising (a
shard error: retried, then reported) or by ending the whole process at once (``os._exit``, as a
kill -9, an OOM kill or a preemption would). It reaches the code under test three ways:

- in-process: ``crash.patch(monkeypatch)`` wraps ``ShardLabeler.run``;
- in Ray actors: ``run_job(job, distribute=crash.on_ray(job))`` runs ``crash.actor_class()``;
- in a CLI process: ``python tests/pipeline/crashing.py CRASH_JSON LABEL_ARGS...`` is
  ``python -m jobs.label LABEL_ARGS...`` with the crash installed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator

from pipeline.distributors import LabelActor, run_on_ray
from pipeline.labeler import ShardLabeler
from pipeline.tasks import Progress

CRASH_EXIT_CODE = 75


class InjectedCrash(RuntimeError):
    """Raised by a Crash in "raise" mode."""


@dataclasses.dataclass(frozen=True)
class Crash:
    shard: str  # output name of the shard to crash in
    after_rows: int = 1  # at the first progress event with at least this many rows written
    mode: str = "raise"  # or "exit": the process dies at once
    attempts: int = 1  # crash only on this many first attempts, so a retry can succeed

    def events(self, events: Iterator, task) -> Iterator:
        """``events`` of ``ShardLabeler.run(task)``, stopped here if this is the shard and attempt."""
        try:
            for event in events:
                yield event
                if (task.name == self.shard and task.attempt <= self.attempts
                        and isinstance(event, Progress) and event.images >= self.after_rows):
                    if self.mode == "exit":
                        os._exit(CRASH_EXIT_CODE)
                    raise InjectedCrash(
                        f"injected failure in shard {task.name} after {event.images} rows (attempt {task.attempt})")
        finally:
            events.close()  # the labeller abandons its uncommitted data file, as on any error of its own

    def patch(self, monkeypatch) -> None:
        run = ShardLabeler.run
        monkeypatch.setattr(ShardLabeler, "run", lambda labeler, task: self.events(run(labeler, task), task))

    def actor_class(self) -> type:
        crash = self

        class CrashingLabelActor(LabelActor):
            def label(self, task):
                yield from crash.events(super().label(task), task)

        return CrashingLabelActor

    def on_ray(self, job):
        """A ``distribute`` hook for ``run_job``: Ray actors of ``actor_class()``."""
        import ray.cloudpickle

        # The actors import pipeline; this module, outside the package, travels with the class.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return lambda queue, on_progress: run_on_ray(queue, job, on_progress, actor_class=self.actor_class())


def main(argv: list[str]) -> int:
    from jobs.cli import exit_cleanly, run_module

    crash = Crash(**json.loads(argv[0]))
    run = ShardLabeler.run
    ShardLabeler.run = lambda labeler, task: crash.events(run(labeler, task), task)
    exit_cleanly(run_module("jobs.label", argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
