"""Who runs ``ShardLabeler``: an in-process loop, or Ray actors (one model each).

Both take a ``ShardQueue`` and yield one event per finished attempt (ShardDone, ShardRetry,
ShardFailed), plus WorkerReady when a model has loaded; progress goes to a callback. The retry
policy lives in the queue, so it is the same whichever runs the shards.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from pipeline.config import LabelJobConfig
from pipeline.tasks import Event, Progress, ShardDone, ShardFailed, ShardRetry, ShardTask, WorkerReady
from schemas.markers import ShardMarker
from schemas.urls import redact_url, redact_urls_in

if TYPE_CHECKING:
    from pipeline.labeler import ShardLabeler

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[Progress], None]
_UNSCHEDULED_WARNING_SECONDS = 120.0
# The CUDA caching allocator grows segments in place instead of reserving a new block per size:
# decodes allocate tensors of about 12 GiB beside temporaries of about 7 GiB, which fragment the
# default allocator's pool. A value already in the driver's environment is passed on unchanged.
CUDA_ALLOC_CONF = "expandable_segments:True"


class JobError(RuntimeError):
    """The job cannot go on at all (e.g. no actor can load the model); the message says why."""


class ShardQueue:
    """Shards waiting to run, in order; a failed attempt goes to the back until attempts run out."""

    def __init__(self, tasks: Iterable[ShardTask], max_attempts: int):
        self._waiting = collections.deque(tasks)
        self.max_attempts = max_attempts
        self.in_flight: dict[str, ShardTask] = {}

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def __len__(self) -> int:
        return len(self._waiting)

    def pop(self) -> ShardTask:
        task = self._waiting.popleft()
        self.in_flight[task.name] = task
        return task

    def done(self, task: ShardTask, marker: ShardMarker) -> ShardDone:
        self.in_flight.pop(task.name, None)
        return ShardDone(task, marker)

    def failed(self, task: ShardTask, error: str) -> ShardRetry | ShardFailed:
        self.in_flight.pop(task.name, None)
        error = redact_urls_in(error)  # it goes to logs and the manifest
        if task.attempt < self.max_attempts:
            self._waiting.append(task.retry())
            return ShardRetry(task, error)
        return ShardFailed(task, error)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# -- in-process ------------------------------------------------------------------------------------


def run_locally(queue: ShardQueue, labeler: ShardLabeler, on_progress: ProgressCallback) -> Iterator[Event]:
    """Label the queue's shards one after another in this process."""
    from pipeline.failures import END_WORKER, failure_action

    yield WorkerReady({**labeler.model_info, "worker": labeler.worker})
    while queue:
        task = queue.pop()
        try:
            marker = labeler(task, on_progress)
        except Exception as error:  # the shard-level retry boundary: every cause is retried, then failed
            logger.debug("shard %s attempt %d failed:\n%s", task.name, task.attempt, redact_urls_in(traceback.format_exc()))
            if failure_action(error) == END_WORKER:  # this process's device is gone; a rerun resumes
                raise JobError(f"the device failed while labelling shard {task.name} ({describe(error)}); nothing of "
                               "that shard was committed. Run the same command again to resume in a fresh process.") from None
            yield queue.failed(task, describe(error))
            continue
        yield queue.done(task, marker)


# -- Ray -------------------------------------------------------------------------------------------


class LabelActor:
    """One model on one GPU (or CPU), labelling whole shards for the driver."""

    def __init__(self, job: LabelJobConfig, log_level: int = logging.WARNING):
        # Imported here: the labeller and the model pull in torch, which the driver never needs.
        from pipeline.labeler import ShardLabeler
        from pipeline.models import load_clip, load_segmenter

        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("pipeline").setLevel(log_level)
        self.labeler = ShardLabeler(load_segmenter(job), job, clip=load_clip(job))

    def ready(self) -> dict:
        return {**self.labeler.model_info, "worker": self.labeler.worker}

    def label(self, task: ShardTask) -> Iterator[Progress | ShardMarker]:
        # A streaming generator: the driver sees progress while the shard runs, the marker last.
        from pipeline.failures import DEVICE_FAILURE_EXIT_CODE, END_WORKER, failure_action

        try:
            yield from self.labeler.run(task)
        except Exception as error:
            if failure_action(error) == END_WORKER:
                # The labeller has removed the attempt's data file. A broken CUDA context fails every
                # later kernel of this process: end it (no marker) so that Ray's replacement retries the shard.
                logger.error("device failure in shard %s, ending this actor so that a fresh one retries it: %s",
                             task.name, describe(error))
                os._exit(DEVICE_FAILURE_EXIT_CODE)
            raise


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local instance without dashboard."""
    import ray

    if ray.is_initialized():  # e.g. under a test fixture, or a notebook's own ray.init
        yield
        return
    target = address or os.environ.get("RAY_ADDRESS")
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if target:
            ray.init(address=address)
        else:  # "local": a new instance even if `ray start` left one running on this machine
            ray.init(address="local", include_dashboard=False)
    except (ConnectionError, RuntimeError) as error:
        where = f"the Ray cluster at {redact_url(target)}" if target else "a local Ray instance"
        raise JobError(f"could not start or join {where}: {_original_message(error)}") from error
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)  # ray.init replaced the caller's handler with sys.exit
    try:
        yield
    finally:
        ray.shutdown()


def actor_options(job: LabelJobConfig, cluster: dict[str, float]) -> tuple[int, dict]:
    """How many actors, and the Ray options of each, from the job and the cluster's resources."""
    gpus, cpus = cluster.get("GPU", 0), cluster.get("CPU", 0)
    use_gpu = job.accelerator == "gpu" or (job.accelerator == "auto" and gpus >= 1)
    if use_gpu:
        num_actors = job.num_actors or max(int(gpus), 1)
        num_cpus = job.cpus_per_actor or 1  # the reader thread; the model runs on the GPU
        environment = {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF)}
        return num_actors, {"num_gpus": 1, "num_cpus": num_cpus, "max_restarts": 0,
                            "runtime_env": {"env_vars": environment}}
    num_actors = job.num_actors or 1
    num_cpus = job.cpus_per_actor or max(int(cpus // num_actors), 1)
    return num_actors, {"num_gpus": 0, "num_cpus": num_cpus, "max_restarts": 0}


def actor_job(job: LabelJobConfig, options: dict) -> LabelJobConfig:
    """The job as an actor with ``options`` runs it: on the CPU when the actor reserves no GPU.

    Ray 2.60 no longer blanks CUDA_VISIBLE_DEVICES for actors that reserve no GPU
    (ray-project/ray#54868): such an actor still sees every GPU of its node, and with no device
    named would take cuda:0 and plan its memory for the whole card.
    """
    if options["num_gpus"]:
        return job
    if job.device is not None and job.device.startswith("cuda"):
        raise JobError(f"--device {job.device} needs a GPU, but the actors reserve none (--accelerator {job.accelerator}, "
                       "cluster GPUs: see `ray status`); pass --accelerator gpu, or leave --device out to label on CPUs.")
    return job.replace(device="cpu")


def _original_message(error: BaseException) -> str:
    # Ray's messages carry whole tracebacks; the original exception is the last "SomeError: ..."
    # line, and a multi-line message (what to do next) continues after it.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [(i, match.end()) for i, line in enumerate(lines)
             if (match := re.search(r"\b[\w.]*(Error|Exception|Interrupt): ", line))]
    if found:
        index, end = found[-1]
        return " ".join([lines[index][end:], *lines[index + 1:]])
    return lines[-1] if lines else type(error).__name__


class _PendingRefs:
    """The references ``ray.wait`` watches, as one list kept up to date: adding and removing one is
    O(1) (the last reference moves into the removed one's slot), so no event rebuilds the list."""

    def __init__(self):
        self.refs: list = []
        self._index: dict = {}

    def add(self, ref) -> None:
        self._index[ref] = len(self.refs)
        self.refs.append(ref)

    def remove(self, ref) -> None:
        index, last = self._index.pop(ref), self.refs.pop()
        if index < len(self.refs):
            self.refs[index] = last
            self._index[last] = index


class _RayActorPool:
    def __init__(self, job: LabelJobConfig, num_actors: int, options: dict, actor_class: type = LabelActor,
                 ready_timeout: float | None = None):
        import ray

        self.ray = ray
        self.job = job
        self.num_actors = num_actors
        self.options = options
        self.actor_class = ray.remote(actor_class).options(**options)
        self.log_level = logging.getLogger("pipeline").getEffectiveLevel()
        self.starting: dict = {}  # ready() ref -> actor
        self.idle: list = []
        self.running: dict = {}  # streaming generator -> (actor, task)
        self.pending = _PendingRefs()  # the ready() refs of starting actors and the running generators
        self.any_ready = False
        self.deaths = 0  # since the last committed shard
        self.started_at = self.waiting_since = time.monotonic()
        self.ready_timeout = ready_timeout
        for _ in range(num_actors):
            self._start_actor()

    def _start_actor(self) -> None:
        actor = self.actor_class.remote(self.job, self.log_level)
        ref = actor.ready.remote()
        self.starting[ref] = actor
        self.pending.add(ref)

    def _replace(self, actor, reason: str) -> None:
        self.ray.kill(actor, no_restart=True)
        self.deaths += 1
        # Actors that keep dying without committing anything are not a shard's fault (a crash loop);
        # stop before burning the cluster. Deaths between commits (spot preemptions over days) are not.
        if self.deaths > self.num_actors * self.job.max_attempts:
            raise JobError(f"{self.deaths} Ray actors died without a shard committed in between; the last: {reason}")
        logger.warning("a labelling actor died (%s); starting a replacement", reason)
        self._start_actor()

    def run(self, queue: ShardQueue, on_progress: ProgressCallback) -> Iterator[Event]:
        while queue or self.running:
            while self.idle and queue:
                actor, task = self.idle.pop(), queue.pop()
                generator = actor.label.options(num_returns="streaming").remote(task)
                self.running[generator] = (actor, task)
                self.pending.add(generator)
            ready, _ = self.ray.wait(self.pending.refs, num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in self.starting:
                    yield from self._on_started(ref)
                else:
                    yield from self._on_shard_event(ref, queue, on_progress)
            self._check_ready_deadline()
            self._warn_if_unscheduled()

    def _check_ready_deadline(self) -> None:
        if self.any_ready or self.ready_timeout is None:
            return
        waited = time.monotonic() - self.started_at
        if waited >= self.ready_timeout:
            raise JobError(f"no labelling actor was ready {waited:.0f} s after the start (the limit is "
                           f"{self.ready_timeout:.0f} s); each needs {self.options}, the cluster has "
                           f"{self.ray.cluster_resources()}. Is a GPU visible to Ray (`ray status`)?")

    def _on_started(self, ref) -> Iterator[Event]:
        actor = self.starting.pop(ref)
        self.pending.remove(ref)
        try:
            info = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as error:
            if not self.any_ready:  # the first model load failed: every other actor would too
                raise JobError(f"the labelling actor could not start: {_original_message(error)}") from None
            self._replace(actor, _original_message(error))
            return
        self.any_ready = True
        self.idle.append(actor)
        yield WorkerReady(info)

    def _on_shard_event(self, generator, queue: ShardQueue, on_progress: ProgressCallback) -> Iterator[Event]:
        actor, task = self.running[generator]
        try:
            event = self.ray.get(next(generator))
        except StopIteration:
            self._stop_watching(generator)
            self.idle.append(actor)
            yield queue.failed(task, "the actor finished the shard without a marker")
        except self.ray.exceptions.RayActorError as error:
            self._stop_watching(generator)
            self._replace(actor, _original_message(error))
            yield queue.failed(task, f"actor died: {_original_message(error)}")
        except self.ray.exceptions.RayTaskError as error:
            self._stop_watching(generator)
            self.idle.append(actor)
            yield queue.failed(task, describe(error.cause) if error.cause else _original_message(error))
        else:
            if isinstance(event, ShardMarker):
                self._stop_watching(generator)
                self.idle.append(actor)
                self.deaths = 0
                yield queue.done(task, event)
            else:
                on_progress(event)

    def _stop_watching(self, generator) -> None:
        del self.running[generator]
        self.pending.remove(generator)

    def _warn_if_unscheduled(self) -> None:
        # Before the first model loads, or after every node with a GPU was lost: shards wait, no
        # actor can be placed, and without a word the job would look hung.
        if self.idle or self.running:
            self.waiting_since = time.monotonic()
            return
        if time.monotonic() - self.waiting_since < _UNSCHEDULED_WARNING_SECONDS:
            return
        logger.warning("no labelling actor is running for %.0fs; each needs %s. Cluster resources now: %s",
                       time.monotonic() - self.waiting_since, self.options, self.ray.cluster_resources())
        self.waiting_since = time.monotonic()

    def shutdown(self) -> None:
        for actor in [*self.starting.values(), *self.idle, *(a for a, _ in self.running.values())]:
            self.ray.kill(actor, no_restart=True)


def run_on_ray(queue: ShardQueue, job: LabelJobConfig, on_progress: ProgressCallback,
               actor_class: type = LabelActor, ready_timeout: float | None = None) -> Iterator[Event]:
    """Label the queue's shards with Ray actors; a dead actor is replaced and its shard requeued.

    ``actor_class``: LabelActor or a subclass (the tests' actors that crash on purpose, the GPU
    check's that warms up). ``ready_timeout``: seconds after which the job fails (JobError) if no
    actor has loaded its model yet; None waits, with a warning now and then (autoscaling clusters).
    """
    import ray

    with ray_session(job.address):
        num_actors, options = actor_options(job, ray.cluster_resources())
        logger.info("starting %d labelling actor(s), each with %s", num_actors, options)
        pool = _RayActorPool(actor_job(job, options), num_actors, options, actor_class, ready_timeout)
        try:
            yield from pool.run(queue, on_progress)
        finally:
            pool.shutdown()
