"""``_RayActorPool`` against a scripted fake of the few Ray calls it makes, on a simulated clock.

No Ray and no sleeps: ``FakeRay.wait`` moves the clock to the next ready ref (or by the timeout),
and the pool reads the same clock. Each test scripts which actor dies on which shard and how long
an actor takes to be placed, then drives the pool through a ``ShardQueue`` as ``run_on_ray`` does.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import types

import pytest

from pipeline import distributors
from pipeline.config import LabelJobConfig
from pipeline.distributors import JobError, ShardQueue
from pipeline.tasks import ShardDone, ShardFailed, ShardRetry, WorkerReady
from pipeline.tasks import Progress, ShardTask
from schemas.markers import ShardMarker, ShardStats

GPU_ACTOR = {"num_gpus": 1, "num_cpus": 1, "max_restarts": 0}
SHARD_SECONDS = 10.0  # simulated time one attempt takes; its one progress event comes halfway


class ActorDied(Exception):
    """Stands in for ray.exceptions.RayActorError."""


class TaskFailed(Exception):
    """Stands in for ray.exceptions.RayTaskError."""

    cause = None


class Ref:
    """An object ref: ready at a simulated time, then gives its value or raises its error."""

    def __init__(self, ready_at: float, value=None, error: Exception | None = None):
        self.ready_at, self.value, self.error = ready_at, value, error


class Stream:
    """What ``actor.label.options(num_returns="streaming").remote(task)`` returns: refs, one by one."""

    def __init__(self, refs: list[Ref]):
        self.refs = collections.deque(refs)
        self.end = refs[-1].ready_at

    @property
    def ready_at(self) -> float:  # an exhausted stream is ready at once (next() says StopIteration)
        return self.refs[0].ready_at if self.refs else self.end

    def __next__(self) -> Ref:
        if not self.refs:
            raise StopIteration
        return self.refs.popleft()


class Method:
    """An actor method: ``.remote(...)``, and ``.options(num_returns="streaming")`` for ``label``."""

    def __init__(self, call):
        self.call = call

    def options(self, **options) -> Method:
        assert options == {"num_returns": "streaming"}, options
        return self

    def remote(self, *args):
        return self.call(*args)


class Actor:
    def __init__(self, ray: FakeRay, number: int):
        self.number = number  # in start order: 0, 1, ... (replacements get the next numbers)
        self.killed = False
        self.ready = Method(lambda: ray.ready_ref(self))
        self.label = Method(lambda task: ray.label_stream(self, task))


class FakeRay:
    """The parts of the ``ray`` module ``_RayActorPool`` uses.

    ``dies(actor_number, task)``: whether that actor dies halfway through that attempt (after its
    progress event). ``place_after(actor_number)``: seconds until the actor has loaded its model;
    ``math.inf`` when no node can take it.
    """

    exceptions = types.SimpleNamespace(RayActorError=ActorDied, RayTaskError=TaskFailed)

    def __init__(self, dies=lambda actor, task: False, place_after=lambda actor: 0.0, resources=None):
        self.dies, self.place_after = dies, place_after
        self.resources = resources or {"CPU": 8.0, "GPU": 2.0}
        self.now = 0.0
        self.actors: list[Actor] = []
        self.options: dict | None = None

    # -- the module's functions the pool calls

    def remote(self, cls):  # ray.remote(LabelActor).options(**options).remote(job, log_level)
        assert cls is distributors.LabelActor

        def options(**options):
            self.options = options
            return types.SimpleNamespace(remote=lambda job, log_level: self.start_actor())

        return types.SimpleNamespace(options=options)

    def wait(self, refs: list, num_returns: int, timeout: float) -> tuple[list, list]:
        """Like Ray's: the first ref ready within ``timeout``; the clock moves to it, or by ``timeout``."""
        assert num_returns == 1
        soonest = min(refs, key=lambda ref: ref.ready_at, default=None)  # ties: the first listed
        if soonest is None or soonest.ready_at > self.now + timeout:
            self.now += timeout
            return [], refs
        self.now = max(self.now, soonest.ready_at)
        return [soonest], [ref for ref in refs if ref is not soonest]

    def get(self, ref: Ref):
        assert ref.ready_at <= self.now, "ray.get on a ref that is not ready would block"
        if ref.error is not None:
            raise ref.error
        return ref.value

    def kill(self, actor: Actor, no_restart: bool) -> None:
        assert no_restart
        actor.killed = True

    def cluster_resources(self) -> dict:
        return self.resources

    # -- what the actors do

    def start_actor(self) -> Actor:
        self.actors.append(Actor(self, len(self.actors)))
        return self.actors[-1]

    def ready_ref(self, actor: Actor) -> Ref:
        return Ref(self.now + self.place_after(actor.number), value={"worker": f"fake:{actor.number}"})

    def label_stream(self, actor: Actor, task: ShardTask) -> Stream:
        assert not actor.killed, f"a killed actor was given shard {task.name}"
        progress = Progress(task.name, task.attempt, images=1, bytes_read=1, shard_bytes=2)
        finish = self.now + SHARD_SECONDS
        if self.dies(actor.number, task):
            last = Ref(finish, error=ActorDied(f"The actor fake:{actor.number} died unexpectedly"))
        else:
            last = Ref(finish, value=marker(task, f"fake:{actor.number}"))
        return Stream([Ref(self.now + SHARD_SECONDS / 2, value=progress), last])


def marker(task: ShardTask, worker: str) -> ShardMarker:
    return ShardMarker(
        shard=task.name, url=task.url, data_file=f"data/{task.name}.parquet", data_bytes=1, input_size=2,
        input_etag=None, config_hash="c", model="tiny", weights_sha256=None, schema_version=1,
        code_version="test", attempt=task.attempt, worker=worker, started_at="", finished_at="",
        stats=ShardStats(rows=1, ok=1))


def index(task: ShardTask) -> int:
    return int(task.name.removeprefix("s"))


def shard_queue(count: int, max_attempts: int) -> ShardQueue:
    return ShardQueue([ShardTask(f"memory://in/s{i:02d}.tar") for i in range(count)], max_attempts)


def start_pool(monkeypatch, ray: FakeRay, num_actors: int, max_attempts: int,
               ready_timeout: float | None = None) -> distributors._RayActorPool:
    monkeypatch.setitem(sys.modules, "ray", ray)
    # Only the pool's clock: the real time module stays as it is for pytest and logging.
    monkeypatch.setattr(distributors, "time", types.SimpleNamespace(monotonic=lambda: ray.now))
    job = LabelJobConfig(inputs=("memory://in/s00.tar",), output="memory://out", max_attempts=max_attempts)
    return distributors._RayActorPool(job, num_actors, GPU_ACTOR, ready_timeout=ready_timeout)


def of_type(events: list, kind: type) -> list:
    return [event for event in events if isinstance(event, kind)]


def actor_deaths(events: list) -> list:
    return [event for event in events if isinstance(event, (ShardRetry, ShardFailed)) and "actor died" in event.error]


def unscheduled_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.levelno == logging.WARNING and "no labelling actor" in record.getMessage()]


# -- the actor-death budget counts deaths since the last commit -------------------------------------


def test_actors_dying_between_commits_never_stop_a_long_job(monkeypatch):
    # Spot preemptions over a long run: the first attempt of every odd shard loses its actor. That
    # is 10 deaths in all, far more than num_actors * max_attempts = 4, but shards commit in between.
    ray = FakeRay(dies=lambda actor, task: task.attempt == 1 and index(task) % 2 == 1)
    pool = start_pool(monkeypatch, ray, num_actors=2, max_attempts=2)
    queue, progress = shard_queue(20, max_attempts=2), []

    events = list(pool.run(queue, progress.append))

    assert len(actor_deaths(events)) == len(of_type(events, ShardRetry)) == 10
    assert not of_type(events, ShardFailed)
    done = {event.task.name: event.marker.attempt for event in of_type(events, ShardDone)}
    assert done == {f"s{i:02d}": 1 + i % 2 for i in range(20)}  # each odd shard on its second attempt
    assert not queue and not queue.in_flight
    assert len(progress) == 30  # one per attempt, dead ones included
    # Each dead actor was killed and replaced, and every replacement became ready.
    assert len(ray.actors) == 12 and len(of_type(events, WorkerReady)) == 12
    assert sum(actor.killed for actor in ray.actors) == 10
    assert ray.options == GPU_ACTOR
    pool.shutdown()
    assert all(actor.killed for actor in ray.actors)


def test_actors_dying_with_no_commit_in_between_stop_the_job(monkeypatch):
    # s01 loses its actor once early on (a preemption, forgiven by the commits after it). From s06 on
    # every attempt kills its actor, as on a cluster whose GPUs all went bad: a crash loop that must
    # stop after num_actors * max_attempts + 1 = 5 deaths with no shard committed in between.
    ray = FakeRay(dies=lambda actor, task: index(task) >= 6 or (index(task) == 1 and task.attempt == 1))
    pool = start_pool(monkeypatch, ray, num_actors=2, max_attempts=2)
    queue, events = shard_queue(20, max_attempts=2), []

    with pytest.raises(JobError, match=r"^5 Ray actors died without a shard committed in between; the last: "
                                       r"The actor fake:\d+ died unexpectedly$"):
        for event in pool.run(queue, lambda progress: None):
            events.append(event)

    last_commit = max(i for i, event in enumerate(events) if isinstance(event, ShardDone))
    assert len(actor_deaths(events[:last_commit])) == 1  # s01's, before the crash loop
    # The fifth death raises before its shard is reported, so four are reported after the last commit.
    assert len(actor_deaths(events[last_commit:])) == 4
    # s01's second attempt was queued behind s19, so the job stopped before it.
    assert sorted(event.task.name for event in of_type(events, ShardDone)) == ["s00", "s02", "s03", "s04", "s05"]
    pool.shutdown()
    assert all(actor.killed for actor in ray.actors)


# -- a warning whenever no actor is idle or running for a while --------------------------------------


def test_warns_when_the_only_actor_dies_and_its_replacement_cannot_be_placed(monkeypatch, caplog):
    # The only GPU node is lost while labelling s01; the cluster has CPUs left but no GPU, so the
    # replacement waits 300 s (until the autoscaler brings a GPU node back). The job must say why it
    # is not moving, and what an actor needs, even though an actor had been ready before.
    ray = FakeRay(dies=lambda actor, task: actor == 0 and index(task) == 1,
                  place_after=lambda actor: 300.0 if actor == 1 else 0.0, resources={"CPU": 4.0})
    pool = start_pool(monkeypatch, ray, num_actors=1, max_attempts=2)
    queue = shard_queue(3, max_attempts=2)

    with caplog.at_level(logging.WARNING, logger="pipeline.distributors"):
        events = list(pool.run(queue, lambda progress: None))

    warnings = unscheduled_warnings(caplog)
    assert len(warnings) == 2  # one per 120 s of the 300 s wait
    for warning in warnings:
        assert "no labelling actor is running for 12" in warning  # 120 s, give or take a wait timeout
        assert str(GPU_ACTOR) in warning and "{'CPU': 4.0}" in warning
    assert sorted(event.task.name for event in of_type(events, ShardDone)) == ["s00", "s01", "s02"]
    assert not queue and not queue.in_flight


def test_warns_when_the_first_actor_cannot_be_placed(monkeypatch, caplog):
    ray = FakeRay(place_after=lambda actor: 200.0)
    pool = start_pool(monkeypatch, ray, num_actors=1, max_attempts=2)

    with caplog.at_level(logging.WARNING, logger="pipeline.distributors"):
        events = list(pool.run(shard_queue(2, max_attempts=2), lambda progress: None))

    assert len(unscheduled_warnings(caplog)) == 1
    assert len(of_type(events, ShardDone)) == 2


def test_no_warning_while_an_actor_is_running(monkeypatch, caplog):
    # One of two actors can never be placed, but the other labels shard after shard for 300 s, well
    # past the warning delay: the job is moving, so it says nothing.
    ray = FakeRay(place_after=lambda actor: math.inf if actor == 1 else 0.0)
    pool = start_pool(monkeypatch, ray, num_actors=2, max_attempts=2)

    with caplog.at_level(logging.WARNING, logger="pipeline.distributors"):
        events = list(pool.run(shard_queue(30, max_attempts=2), lambda progress: None))

    assert ray.now >= 2 * distributors._UNSCHEDULED_WARNING_SECONDS
    assert len(of_type(events, ShardDone)) == 30
    assert unscheduled_warnings(caplog) == []


def test_the_pool_keeps_one_list_of_pending_refs_updated_in_place():
    pending = distributors._PendingRefs()
    refs = [object() for _ in range(6)]
    for ref in refs:
        pending.add(ref)
    watched = pending.refs
    for ref in (refs[0], refs[3], refs[5]):
        pending.remove(ref)
    pending.add(refs[0])
    assert pending.refs is watched  # the list ray.wait gets is the same object, never rebuilt
    assert sorted(map(id, pending.refs)) == sorted(map(id, [refs[1], refs[2], refs[4], refs[0]]))


# -- a deadline for the first actor (the GPU check's) ------------------------------------------------


def test_no_actor_ready_by_the_deadline_stops_the_job_saying_what_an_actor_needs(monkeypatch):
    ray = FakeRay(place_after=lambda actor: math.inf, resources={"CPU": 16.0})
    pool = start_pool(monkeypatch, ray, num_actors=1, max_attempts=2, ready_timeout=120.0)
    with pytest.raises(JobError, match=r"no labelling actor was ready 12\d s after the start \(the limit is 120 s\); "
                                       r"each needs .*'num_gpus': 1.*the cluster has \{'CPU': 16.0\}"):
        list(pool.run(shard_queue(2, max_attempts=2), lambda progress: None))
    assert 120 <= ray.now < 122


def test_an_actor_ready_before_the_deadline_labels_past_it(monkeypatch):
    ray = FakeRay(place_after=lambda actor: 100.0)
    pool = start_pool(monkeypatch, ray, num_actors=1, max_attempts=2, ready_timeout=120.0)
    events = list(pool.run(shard_queue(5, max_attempts=2), lambda progress: None))
    assert len(of_type(events, ShardDone)) == 5 and ray.now > 120


# -- what each actor is given --------------------------------------------------------------------------


@pytest.mark.parametrize("accelerator, cluster", [("cpu", {"CPU": 8.0, "GPU": 1.0}), ("auto", {"CPU": 8.0})])
def test_an_actor_that_reserves_no_gpu_is_told_to_use_the_cpu(accelerator, cluster):
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for such actors: they would see the node's GPUs.
    job = LabelJobConfig(inputs=("a.tar",), output="o", accelerator=accelerator)
    _, options = distributors.actor_options(job, cluster)
    assert options["num_gpus"] == 0 and "runtime_env" not in options
    assert distributors.actor_job(job, options).device == "cpu"
    with pytest.raises(JobError, match=r"--device cuda:1 needs a GPU, but the actors reserve none"):
        distributors.actor_job(job.replace(device="cuda:1"), options)


def test_a_gpu_actor_keeps_the_jobs_device_and_gets_the_expandable_allocator(monkeypatch):
    job = LabelJobConfig(inputs=("a.tar",), output="o", accelerator="auto")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    _, options = distributors.actor_options(job, {"CPU": 8.0, "GPU": 2.0})
    assert options["num_gpus"] == 1 and distributors.actor_job(job, options) is job
    assert options["runtime_env"] == {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}}
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")  # the driver's own choice is kept
    _, options = distributors.actor_options(job, {"CPU": 8.0, "GPU": 2.0})
    assert options["runtime_env"] == {"env_vars": {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}}


def test_a_cpu_actor_labels_on_the_cpu_though_cuda_is_visible(monkeypatch, make_job, tmp_path):
    """What the actor's process sees under Ray 2.60: the node's GPU listed, torch able to use it."""
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    job = make_job(["a.tar"], tmp_path / "out", accelerator="cpu")
    _, options = distributors.actor_options(job, {"CPU": 2.0, "GPU": 1.0})
    actor = distributors.LabelActor(distributors.actor_job(job, options), logging.NOTSET)
    assert actor.labeler.segmenter.device == torch.device("cpu")
    assert actor.ready()["device"] == "cpu"
