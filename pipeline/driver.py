"""The labelling job's driver: plan the shards, check the output, hand shards out, finish the run.

    inputs -> shard URLs -> pending (no marker yet) -> distributor (Ray actors or local loop)
           -> markers -> _manifest.parquet -> _SUCCESS (only when every input shard is done)

Resume is the same command again: shards with a marker are skipped. An output made with another
model or method config is refused unless ``overwrite`` (which deletes it first). What is written
when, and how a shard becomes done, is ``pipeline.commit``. The driver's cost follows the work of
this run: it lists the markers once, and the manifest is built from this run's commits and the
previous manifest. It never imports torch: the model lives in the labellers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from tqdm.contrib.logging import logging_redirect_tqdm

import emerdiff
from pipeline import commit
from pipeline.config import LabelJobConfig
from pipeline.distributors import JobError, ProgressCallback, ShardQueue, run_locally, run_on_ray
from pipeline.lease import LeaseRecord, OutputLease, read_lease
from pipeline.progress import ImageProgress
from pipeline.exit_status import ExitStatus
from pipeline.tasks import Event, Progress, ShardDone, ShardFailed, ShardRetry, ShardTask, WorkerReady
from schemas.labels import SCHEMA_VERSION
from schemas.layout import OutputLayout, data_file_key
from schemas.markers import ShardMarker, ShardStats, manifest_row_failed
from schemas.reading import load_job
from schemas.shards import expand_shards, shard_name
from schemas.urls import redact_url

logger = logging.getLogger(__name__)

JOB_KIND = "emerdiff.label"


class JobRefused(RuntimeError):
    """The output folder holds another job's results; the message says how to proceed."""


# -- planning --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ShardPlan:
    output: str  # redacted
    shards: dict[str, str]  # output name -> input URL, in input order
    done: list[str]  # names with a marker: skipped
    pending: list[str]  # names to label
    previous_job: dict | None  # the output's _job.json, if any
    markers: frozenset[str] = frozenset()  # every shard with a marker, input or not (one listing)
    overwrite: bool = False
    lease: LeaseRecord | None = None  # the job writing the output now, if any


    def format(self) -> str:
        lines = [f"output {self.output}: {len(self.shards)} input shard(s), {len(self.done)} done, {len(self.pending)} pending"]
        if self.lease is not None:
            lines.append(f"being written now by {self.lease.describe(time.time())}")
        if self.overwrite and self.previous_job:
            lines.append("--overwrite: the existing output would be deleted first and every shard labelled again")
        lines += [f"  pending  {name}  {redact_url(self.shards[name])}" for name in self.pending]
        lines += [f"  done     {name}  {redact_url(self.shards[name])}" for name in self.done]
        return "\n".join(lines)


def plan_job(job: LabelJobConfig, layout: OutputLayout | None = None) -> ShardPlan:
    """Which input shards are done and which are pending; raises JobRefused for an incompatible output."""
    job = job.with_absolute_paths()
    layout = layout or OutputLayout(job.output, job.storage_options)
    markers = frozenset() if job.overwrite else frozenset(layout.list_markers())  # the one listing
    previous = check_output(layout, job, markers)
    shards = _name_shards(expand_shards(job.inputs, job.storage_options))
    return ShardPlan(
        output=redact_url(job.output),
        shards=shards,
        done=[name for name in shards if name in markers],
        pending=[name for name in shards if name not in markers],
        previous_job=previous,
        markers=markers,
        overwrite=job.overwrite,
        lease=read_lease(layout),
    )


def _name_shards(urls: Iterable[str]) -> dict[str, str]:
    shards: dict[str, str] = {}
    for url in urls:
        name = shard_name(url)
        if name in shards:
            raise ValueError(
                f"input shards {redact_url(shards[name])} and {redact_url(url)} would both be written as "
                f"{data_file_key(name)}; label them into separate outputs or rename one"
            )
        shards[name] = url
    return shards


def check_output(layout: OutputLayout, job: LabelJobConfig, markers: Iterable[str]) -> dict | None:
    """The output's previous _job.json (None if new); JobRefused if it was made differently.

    ``markers``: the shards with a marker, as planning listed them.
    """
    previous = load_job(layout)
    if job.overwrite:
        return previous

    def holds_labels() -> bool:  # lists data/ only when the answer matters and no marker settles it
        return bool(markers) or bool(layout.list_data_files())

    if previous is None:
        if holds_labels():
            raise JobRefused(
                f"{redact_url(job.output)} holds labels but no _job.json, so it cannot be resumed safely. "
                "Choose another --output, or pass --overwrite to delete them and start over."
            )
        return None
    differences = []
    if previous.get("config_hash") != job.method.config_hash:
        detail = "; ".join(_config_changes(previous.get("config", {}), job.method)) or "fields differ"
        differences.append(f"method config (config_hash {previous.get('config_hash')} -> {job.method.config_hash}: {detail})")
    if previous.get("model") != redact_url(job.model):
        differences.append(f"model ({previous.get('model')!r} -> {redact_url(job.model)!r})")
    differences += _clip_changes(previous.get("clip"), job.clip_record())
    if differences and not holds_labels():
        logger.info("%s has no labelled shard yet; starting it again with the new settings", redact_url(job.output))
        return None
    if differences:
        raise JobRefused(
            f"{redact_url(job.output)} already holds labels made with a different " + " and ".join(differences) + ". "
            "Rerun with the same --model and method options to resume it, choose another --output, "
            "or pass --overwrite to delete it and start over with the new settings."
        )
    return previous


def _clip_changes(old: dict | None, new: dict | None) -> list[str]:
    """The CLIP embedding settings that differ, as "field ('old' -> 'new')" (none means no embeddings)."""
    old, new = old or {}, new or {}
    return [f"{name} ({old.get(name)!r} -> {new.get(name)!r})" for name in ("clip_model", "clip_resolution")
            if old.get(name) != new.get(name)]


def _config_changes(old: dict, method) -> list[str]:
    """"field: old -> new" for each result-changing field that differs; "(absent)" for a field the
    old config did not have (made by an older version) or the new one no longer has."""
    new = method.to_dict()
    hashed = {f.name for f in dataclasses.fields(method) if f.metadata.get("hashed", True)}
    names = sorted(hashed | (set(old) - set(new)))
    return [f"{name}: {_shown(old, name)} -> {_shown(new, name)}" for name in names
            if name not in old or name not in new or old[name] != new[name]]


def _shown(config: dict, name: str) -> str:
    return repr(config[name]) if name in config else "(absent)"


# -- the run ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class JobSummary:
    output: str
    shards: int  # input shards
    skipped: int  # done before this run
    committed: dict[str, ShardMarker] = dataclasses.field(default_factory=dict)  # this run's, by shard
    failed: dict[str, ShardFailed] = dataclasses.field(default_factory=dict)
    stats: ShardStats = dataclasses.field(default_factory=ShardStats)  # this run's shards, added up
    per_worker: dict[str, ShardStats] = dataclasses.field(default_factory=dict)
    wall_seconds: float = 0.0

    interrupted: bool = False

    @property
    def labelled(self) -> int:
        return len(self.committed)

    @property
    def exit_code(self) -> ExitStatus:
        if self.interrupted:
            return ExitStatus.INTERRUPTED
        return ExitStatus.PARTIAL if self.failed else ExitStatus.OK

    def format(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.stats.error_reasons.items()))
        rate = self.stats.rows / self.wall_seconds if self.wall_seconds else 0.0
        lines = [
            f"{'INTERRUPTED ' if self.interrupted else ''}emerdiff label -> {self.output}",
            f"  shards: {self.shards} input, {self.skipped} already done, {self.labelled} labelled, {len(self.failed)} failed",
            f"  images: {self.stats.ok} ok, {self.stats.errors} error" + (f" ({reasons})" if reasons else ""),
            f"  wall time: {self.wall_seconds:.1f}s, {rate:.2f} img/s overall",
        ]
        for worker, stats in sorted(self.per_worker.items()):
            busy = stats.wall_seconds
            lines.append(f"  actor {worker}: {stats.rows} images in {busy:.1f}s busy, {stats.rows / busy if busy else 0:.2f} img/s")
        lines += [f"  FAILED {name} after {f.task.attempt} attempt(s): {f.error}" for name, f in sorted(self.failed.items())]
        return "\n".join(lines)


def run_job(job: LabelJobConfig, segmenter=None,
            distribute: Callable[[ShardQueue, ProgressCallback], Iterator[Event]] | None = None) -> JobSummary:
    """Label every pending input shard of ``job``; see the module docstring for the protocol.

    ``segmenter``: an already loaded EmerDiffSegmenter for the local executor (tests); the Ray
    actors always load their own. ``distribute``: runs the shards instead of the local loop or
    Ray, yielding the same events (simulations and tests: benchmarks/scale_sim.py). Raises
    JobRefused or ValueError before any work for bad options; a shard that keeps failing does
    not raise, it is reported in the summary.
    """
    started = time.monotonic()
    job = job.with_absolute_paths()
    layout = OutputLayout(job.output, job.storage_options)
    with OutputLease(layout, job.lease_seconds, job.lease_wait) as lease:
        summary = _run_holding_lease(job, layout, lease, segmenter, distribute)
    summary.wall_seconds = time.monotonic() - started
    return summary


def _run_holding_lease(job: LabelJobConfig, layout: OutputLayout, lease: OutputLease, segmenter, distribute) -> JobSummary:
    plan = plan_job(job, layout)
    if job.overwrite:
        commit.clear_output(layout)
    commit.remove_temp_files(layout)
    record = _job_record(job, plan.previous_job)
    commit.write_job_record(layout, record)
    summary = JobSummary(output=plan.output, shards=len(plan.shards), skipped=len(plan.done))
    if plan.pending:
        commit.remove_success(layout)
    logger.info("%d shard(s) to label, %d already done", len(plan.pending), len(plan.done))

    queue = ShardQueue([ShardTask(plan.shards[name]) for name in plan.pending], job.max_attempts)
    progress = ImageProgress(len(plan.pending))

    def on_progress(event: Progress) -> None:
        lease.check()  # progress arrives every batch, events only once per shard
        progress.update(event)

    try:
        with logging_redirect_tqdm(), contextlib.closing(_distribute(job, queue, on_progress, segmenter, distribute)) as events:
            for event in events:
                lease.check()
                _record_event(event, layout, record, summary, progress)
    except KeyboardInterrupt:
        summary.interrupted = True
        commit.remove_uncommitted(layout, queue.in_flight)
        logger.warning("interrupted: %d shard(s) committed in this run; %d in flight abandoned",
                       summary.labelled, len(queue.in_flight))
    finally:
        progress.close()
    if not summary.interrupted:
        lease.check()
        _finish(layout, plan, summary)
    return summary


def _distribute(job: LabelJobConfig, queue: ShardQueue, on_progress: ProgressCallback, segmenter, distribute) -> Iterator[Event]:
    if not queue:  # nothing to do: no model, no Ray
        return
    if distribute is not None:
        yield from distribute(queue, on_progress)
    elif job.executor == "local":
        yield from run_locally(queue, _local_labeler(job, segmenter), on_progress)
    else:
        yield from run_on_ray(queue, job, on_progress)


def _local_labeler(job: LabelJobConfig, segmenter):
    """The in-process labeller; torch is imported here, only when this process runs the model."""
    from emerdiff import ModelLoadError
    from pipeline.labeler import ShardLabeler
    from pipeline.models import load_clip, load_segmenter

    try:
        segmenter = segmenter or load_segmenter(job)
        clip = load_clip(job)
    except ModelLoadError as error:
        raise JobError(f"the model could not load: {error}") from None
    return ShardLabeler(segmenter, job, clip=clip)


def _record_event(event: Event, layout: OutputLayout, record: dict, summary: JobSummary, progress: ImageProgress) -> None:
    if isinstance(event, WorkerReady):
        _check_weights(event.model_info, layout, record)
    elif isinstance(event, ShardDone):
        marker = event.marker
        summary.committed[marker.shard] = marker
        summary.stats = summary.stats + marker.stats
        summary.per_worker[marker.worker] = summary.per_worker.get(marker.worker, ShardStats()) + marker.stats
        progress.shard_finished(marker.shard)
    elif isinstance(event, ShardRetry):
        logger.warning("shard %s attempt %d failed, will retry: %s", event.task.name, event.task.attempt, event.error)
        progress.shard_abandoned(event.task.name)
    elif isinstance(event, ShardFailed):
        logger.error("shard %s failed after %d attempt(s): %s", event.task.name, event.task.attempt, event.error)
        summary.failed[event.task.name] = event
        progress.shard_abandoned(event.task.name)
        commit.remove_uncommitted(layout, [event.task.name])


def _check_weights(model_info: dict, layout: OutputLayout, record: dict) -> None:
    """The first loaded model's weight hashes are recorded; any other must equal them."""
    if record.get("weights_sha256") is None:
        record["weights_sha256"] = model_info.get("weights_sha256")
        record["model_info"] = {k: v for k, v in model_info.items() if k not in ("model", "worker", *_CLIP_INFO)}
        if record.get("clip") is not None:
            record["clip"] = {**record["clip"], "clip_weights_sha256": model_info.get("clip_weights_sha256"),
                              "clip_dim": model_info.get("clip_dim")}
        commit.write_job_record(layout, record)
        return
    hashes = [("weights_sha256", record, record["model"], "--model")]
    if record.get("clip") is not None:
        hashes.append(("clip_weights_sha256", record["clip"], record["clip"]["clip_model"], "--clip-model"))
    for name, recorded, source, flag in hashes:
        if recorded.get(name) is not None and model_info.get(name) != recorded[name]:
            raise JobRefused(
                f"the weights loaded from {source!r} (sha256 {model_info.get(name)}) are not the ones this output was "
                f"labelled with (sha256 {recorded[name]}). Point {flag} at the original weights, choose another "
                "--output, or pass --overwrite to start over."
            )


_CLIP_INFO = ("clip_model", "clip_weights_sha256", "clip_resolution", "clip_dim")


def _job_record(job: LabelJobConfig, previous: dict | None) -> dict:
    keep_weights = previous is not None and not job.overwrite
    return {
        "kind": JOB_KIND,
        "schema_version": SCHEMA_VERSION,
        "model": redact_url(job.model),
        "weights_sha256": previous.get("weights_sha256") if keep_weights else None,
        "model_info": previous.get("model_info") if keep_weights else None,
        "config": job.method.to_dict(),
        "config_hash": job.method.config_hash,
        "clip": _clip_record(job, previous if keep_weights else None),
        "code_version": emerdiff.__version__,
        "job": job.public_dict(),
        "started_at": commit.now(),
    }


def _clip_record(job: LabelJobConfig, previous: dict | None) -> dict | None:
    """_job.json's "clip": the CLIP model and resolution, and its weights hash once a labeller has loaded it."""
    record = job.clip_record()
    kept = (previous or {}).get("clip") or {}
    if record is not None and "clip_weights_sha256" in kept:
        record.update(clip_weights_sha256=kept["clip_weights_sha256"], clip_dim=kept.get("clip_dim"))
    return record


def _finish(layout: OutputLayout, plan: ShardPlan, summary: JobSummary) -> None:
    commit.remove_temp_files(layout)  # an actor that died mid-shard left its attempt's file; no attempt runs now
    done = plan.markers.union(summary.committed)
    failed = [manifest_row_failed(name, redact_url(plan.shards[name]), failure.error, failure.task.attempt)
              for name, failure in summary.failed.items()]
    done_rows = commit.write_manifest(layout, done, summary.committed, failed)
    if not summary.failed and set(plan.shards) <= done:
        commit.write_success(layout, done_rows)
