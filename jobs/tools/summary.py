"""What a labelling output holds, from its own files: the summary ``emerdiff inspect`` prints.

Shards are done (marker written), failed (the manifest says so and no later run finished them),
interrupted (a data file without a marker: a run stopped mid-shard) or pending (an input of the job
with neither). Row counts, error reasons and timings come from the markers' statistics; only the
example error messages need a read of the data files (their two smallest columns).
"""

from __future__ import annotations

import dataclasses
import json
import statistics

from pipeline.config import output_option
from schemas.labels import STATUS_OK, error_reason
from schemas.layout import OutputLayout
from schemas.shards import expand_shards, shard_name
from schemas.markers import STATUS_FAILED, ShardMarker, ShardStats
from schemas.reading import iter_batches, load_manifest, read_job, read_markers

MAX_SHARD_LINES = 20  # more shards than this: only the slowest are listed one per line
_JOB_FACTS = ("model", "weights_sha256", "config", "config_hash", "clip", "schema_version", "code_version", "started_at")


@dataclasses.dataclass(frozen=True)
class InspectConfig:
    output: str = output_option()
    storage_options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OutputSummary:
    output: str
    complete: bool  # _SUCCESS exists
    job: dict  # _job.json: model, weights, method config, versions, the job's options
    done: list[ShardMarker]
    failed: dict[str, str]  # shard -> why
    interrupted: list[str]
    pending: list[str] | None  # None when the job's inputs could not be listed
    inputs_note: str | None  # why they could not
    totals: ShardStats
    examples: dict[str, str]  # error reason -> one full message

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "complete": self.complete,
            **{name: self.job.get(name) for name in _JOB_FACTS},
            "shards": {
                "done": len(self.done), "failed": len(self.failed), "interrupted": len(self.interrupted),
                "pending": None if self.pending is None else len(self.pending),
            },
            "failed_shards": self.failed,
            "rows": {"total": self.totals.rows, "ok": self.totals.ok, "error": self.totals.errors},
            "error_reasons": [
                {"reason": reason, "count": count, "example": self.examples.get(reason)}
                for reason, count in _top_reasons(self.totals)
            ],
            "per_shard": [_shard_line(marker) for marker in self.done],
        }


def summarise(config: InspectConfig) -> OutputSummary:
    """Raises ValueError when the URL is not a labelling output."""
    output, storage_options = config.output, config.storage_options
    layout = OutputLayout(output, storage_options)
    try:
        job = read_job(output, storage_options)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    done = read_markers(output, storage_options)
    done_names = {marker.shard for marker in done}
    failed = _failed_shards(layout, done_names)
    pending, note = _pending_shards(job, storage_options, done_names | set(failed))
    totals = sum((marker.stats for marker in done), ShardStats())
    return OutputSummary(
        output=output,
        complete=layout.fs.exists(layout.success_path),
        job=job,
        done=done,
        failed=failed,
        interrupted=sorted(set(layout.list_data_files()) - done_names),
        pending=pending,
        inputs_note=note,
        totals=totals,
        examples=_error_examples(output, storage_options) if totals.errors else {},
    )


def _failed_shards(layout: OutputLayout, done: set[str]) -> dict[str, str]:
    manifest = load_manifest(layout)
    rows = [] if manifest is None else manifest.to_pylist()
    return {row["shard"]: row["error"] for row in rows if row["status"] == STATUS_FAILED and row["shard"] not in done}


def _pending_shards(job: dict, storage_options, accounted: set[str]) -> tuple[list[str] | None, str | None]:
    try:
        inputs = expand_shards(job.get("job", {}).get("inputs") or [], storage_options)
    except (OSError, ValueError) as error:  # redacted signed URLs, a store gone away, ...
        return None, f"cannot list the job's inputs again: {error}"
    return sorted({shard_name(url) for url in inputs} - accounted), None


def _error_examples(output: str, storage_options) -> dict[str, str]:
    examples: dict[str, str] = {}
    for _, batch in iter_batches(output, ["status", "error"], storage_options):
        for status, error in zip(batch.column("status").to_pylist(), batch.column("error").to_pylist()):
            if status != STATUS_OK and error:
                examples.setdefault(error_reason(error), error)
    return examples


def _top_reasons(stats: ShardStats, count: int = 10) -> list[tuple[str, int]]:
    return sorted(stats.error_reasons.items(), key=lambda item: (-item[1], item[0]))[:count]


def _shard_line(marker: ShardMarker) -> dict:
    stats = marker.stats
    return {
        "shard": marker.shard, "rows": stats.rows, "ok": stats.ok, "errors": stats.errors,
        "wall_seconds": stats.wall_seconds,
        "images_per_second": stats.rows / stats.wall_seconds if stats.wall_seconds > 0 else None,
    }


def format_summary(summary: OutputSummary) -> str:
    """The text a person reads first."""
    facts = summary.to_dict()
    shards = facts["shards"]
    pending = "?" if shards["pending"] is None else shards["pending"]
    rows = facts["rows"]
    share = f" ({100 * rows['error'] / rows['total']:.1f}%)" if rows["total"] else ""
    lines = [
        f"output     {summary.output} ({'complete' if summary.complete else 'incomplete: no _SUCCESS yet'})",
        f"model      {facts['model']} (weights sha256 {facts['weights_sha256']})",
        f"config     hash {facts['config_hash']}: {json.dumps(facts['config'], sort_keys=True)}",
        f"clip       {_clip_line(facts['clip'])}",
        f"versions   schema {facts['schema_version']}, code {facts['code_version']}; started {facts['started_at']}",
        f"shards     {shards['done']} done, {shards['failed']} failed, {pending} pending"
        + (f" ({shards['interrupted']} interrupted mid-shard)" if shards["interrupted"] else ""),
        f"rows       {rows['ok']} ok, {rows['error']} error{share}",
    ]
    if summary.inputs_note:
        lines.append(f"           ({summary.inputs_note})")
    lines += _error_lines(facts["error_reasons"])
    lines += [f"failed     {name}: {why}" for name, why in sorted(summary.failed.items())]
    lines += _throughput_lines(facts["per_shard"])
    return "\n".join(lines)


def _clip_line(clip: dict | None) -> str:
    if not clip:
        return "none: segments carry no CLIP embeddings (`emerdiff name` needs `label --clip-model`)"
    return (f"{clip['clip_model']} at {clip['clip_resolution']} px (weights sha256 {clip.get('clip_weights_sha256')}): "
            "segments carry CLIP embeddings for `emerdiff name`")


def _error_lines(reasons: list[dict]) -> list[str]:
    if not reasons:
        return []
    lines = ["top errors"]
    for item in reasons:
        example = f'  e.g. "{item["example"]}"' if item["example"] else ""
        lines.append(f"  {item['count']:>8}  {item['reason']}{example}")
    return lines


def _throughput_lines(per_shard: list[dict]) -> list[str]:
    rates = [line for line in per_shard if line["images_per_second"] is not None]
    if not rates:
        return []
    median = statistics.median(line["images_per_second"] for line in rates)
    listed = sorted(rates, key=lambda line: line["images_per_second"])[:MAX_SHARD_LINES]
    title = "per shard" if len(rates) <= MAX_SHARD_LINES else f"slowest {MAX_SHARD_LINES} of {len(rates)} shards"
    lines = [f"throughput median {median:.2f} images/s per shard; {title}:",
             f"  {'shard':<24} {'rows':>7} {'ok':>7} {'errors':>7} {'wall s':>8} {'img/s':>7}"]
    lines += [
        f"  {line['shard']:<24} {line['rows']:>7} {line['ok']:>7} {line['errors']:>7} "
        f"{line['wall_seconds']:>8.1f} {line['images_per_second']:>7.2f}"
        for line in listed
    ]
    return lines
