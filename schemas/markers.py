"""Per-shard completion markers (``_markers/<shard>.json``) and the run manifest.

A marker is written after its data file is closed; its existence is what makes a shard done. It
carries the shard's statistics, so summaries and the manifest need nothing but the markers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pyarrow as pa

MARKER_VERSION = 1
MAX_ERROR_REASONS = 32  # distinct reasons kept per shard; more are counted under OTHER_REASONS
OTHER_REASONS = "other"


@dataclasses.dataclass
class ShardStats:
    """Outcome counts and time spent; add two to merge them (per actor, per job)."""

    rows: int = 0
    ok: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = dataclasses.field(default_factory=dict)  # reason -> count, capped
    read_seconds: float = 0.0  # waiting on the shard stream and decoding, as seen by the model loop
    segment_seconds: float = 0.0  # in segment_batch
    write_seconds: float = 0.0  # encoding rows and writing Parquet
    wall_seconds: float = 0.0  # whole shard, open to marker

    def count_row(self, status_ok: bool, reason: str | None = None) -> None:
        self.rows += 1
        if status_ok:
            self.ok += 1
            return
        self.errors += 1
        self._count_reason(reason or "unknown", 1)

    def _count_reason(self, reason: str, count: int) -> None:
        if reason not in self.error_reasons and len(self.error_reasons) >= MAX_ERROR_REASONS:
            reason = OTHER_REASONS
        self.error_reasons[reason] = self.error_reasons.get(reason, 0) + count

    def __add__(self, other: ShardStats) -> ShardStats:
        total = ShardStats(
            rows=self.rows + other.rows,
            ok=self.ok + other.ok,
            errors=self.errors + other.errors,
            error_reasons=dict(self.error_reasons),
            read_seconds=self.read_seconds + other.read_seconds,
            segment_seconds=self.segment_seconds + other.segment_seconds,
            write_seconds=self.write_seconds + other.write_seconds,
            wall_seconds=self.wall_seconds + other.wall_seconds,
        )
        for reason, count in other.error_reasons.items():
            total._count_reason(reason, count)
        return total


@dataclasses.dataclass(frozen=True)
class ShardMarker:
    shard: str  # output name (schemas.layout.shard_name)
    url: str  # input shard URL, redacted
    data_file: str  # relative to the output root: data/<shard>.parquet
    data_bytes: int
    input_size: int | None  # bytes of the input tar when the store reports it
    input_etag: str | None  # ETag (object stores) or mtime (local disk) of the input
    config_hash: str
    model: str
    weights_sha256: str | None
    schema_version: int
    code_version: str
    attempt: int  # 1 for the first try
    worker: str  # host:pid of the process that wrote it
    started_at: str  # ISO 8601, UTC
    finished_at: str
    stats: ShardStats
    marker_version: int = MARKER_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ShardMarker:
        values: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(names - set(values) - {"marker_version"})
        if missing:
            raise ValueError(f"marker is missing field(s) {missing}")
        values = {k: v for k, v in values.items() if k in names}  # newer writers may add fields
        values["stats"] = ShardStats(**values["stats"])
        return cls(**values)


STATUS_DONE = "done"
STATUS_FAILED = "failed"

MANIFEST_SCHEMA = pa.schema([
    pa.field("shard", pa.string(), nullable=False),
    pa.field("url", pa.string(), nullable=False),  # redacted
    pa.field("status", pa.string(), nullable=False),  # "done" or "failed"
    pa.field("error", pa.string()),  # why a failed shard failed (last attempt)
    pa.field("attempts", pa.int32()),
    pa.field("data_file", pa.string()),  # relative to the output root; null when failed
    pa.field("data_bytes", pa.int64()),
    pa.field("rows", pa.int64()),
    pa.field("ok", pa.int64()),
    pa.field("errors", pa.int64()),
    pa.field("error_reasons", pa.map_(pa.string(), pa.int64())),
    pa.field("input_size", pa.int64()),
    pa.field("input_etag", pa.string()),
    pa.field("config_hash", pa.string()),
    pa.field("weights_sha256", pa.string()),
    pa.field("worker", pa.string()),
    pa.field("wall_seconds", pa.float64()),
    pa.field("finished_at", pa.string()),
])


def manifest_row_done(marker: ShardMarker) -> dict:
    return {
        "shard": marker.shard,
        "url": marker.url,
        "status": STATUS_DONE,
        "error": None,
        "attempts": marker.attempt,
        "data_file": marker.data_file,
        "data_bytes": marker.data_bytes,
        "rows": marker.stats.rows,
        "ok": marker.stats.ok,
        "errors": marker.stats.errors,
        "error_reasons": list(marker.stats.error_reasons.items()),
        "input_size": marker.input_size,
        "input_etag": marker.input_etag,
        "config_hash": marker.config_hash,
        "weights_sha256": marker.weights_sha256,
        "worker": marker.worker,
        "wall_seconds": marker.stats.wall_seconds,
        "finished_at": marker.finished_at,
    }


def manifest_row_failed(shard: str, url: str, error: str, attempts: int) -> dict:
    row = dict.fromkeys(MANIFEST_SCHEMA.names)
    row.update(shard=shard, url=url, status=STATUS_FAILED, error=error, attempts=attempts)
    return row


def manifest_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(sorted(rows, key=lambda row: row["shard"]), schema=MANIFEST_SCHEMA)
