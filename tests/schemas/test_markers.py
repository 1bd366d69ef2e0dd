"""Per-shard statistics, markers and manifest rows (schemas.markers)."""

import json

import pytest

from schemas.markers import MAX_ERROR_REASONS, OTHER_REASONS, ShardMarker, ShardStats, manifest_row_done, manifest_table


def test_stats_add_up_and_cap_distinct_reasons():
    first, second = ShardStats(), ShardStats()
    first.count_row(True)
    for i in range(MAX_ERROR_REASONS + 5):
        second.count_row(False, f"reason {i}")
    total = first + second
    assert (total.rows, total.ok, total.errors) == (MAX_ERROR_REASONS + 6, 1, MAX_ERROR_REASONS + 5)
    assert len(total.error_reasons) == MAX_ERROR_REASONS + 1 and total.error_reasons[OTHER_REASONS] == 5


def test_marker_json_round_trip_and_manifest_row():
    stats = ShardStats()
    stats.count_row(False, "undecodable image")
    marker = ShardMarker(
        shard="s", url="s3://b/s.tar", data_file="data/s.parquet", data_bytes=10, input_size=20, input_etag="e",
        config_hash="c", model="m", weights_sha256="w", schema_version=1, code_version="0.1", attempt=2,
        worker="h:1", started_at="t0", finished_at="t1", stats=stats,
    )
    assert ShardMarker.from_json(marker.to_json()) == marker
    table = manifest_table([manifest_row_done(marker)])
    assert table.column("errors").to_pylist() == [1]
    assert table.column("error_reasons").to_pylist() == [[("undecodable image", 1)]]
    with pytest.raises(ValueError, match="missing"):
        ShardMarker.from_json(json.dumps({"shard": "s"}))
