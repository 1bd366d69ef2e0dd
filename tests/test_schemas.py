"""The output contract: row schema, label PNGs, names, layout, markers, manifest."""

import json

import numpy as np
import pyarrow as pa
import pytest

from schemas.labels import (
    HF_FEATURES, LABELS_SCHEMA, decode_label_png, encode_label_png, error_row, file_metadata, labels_schema,
    ok_row, parse_file_metadata, rows_to_batch,
)
from schemas.layout import OutputLayout
from schemas.shards import shard_name
from schemas.urls import redact_url
from schemas.markers import MAX_ERROR_REASONS, OTHER_REASONS, ShardMarker, ShardStats, manifest_row_done, manifest_table


@pytest.mark.parametrize("high, mode_bits", [(29, 8), (255, 8), (256, 16), (40000, 16)])
def test_label_png_round_trip_picks_the_smallest_depth(high, mode_bits):
    from PIL import Image
    import io

    labels = np.random.default_rng(0).integers(0, high + 1, size=(7, 11))
    labels[0, 0] = high
    data = encode_label_png(labels)
    assert Image.open(io.BytesIO(data)).mode == ("L" if mode_bits == 8 else "I;16")
    np.testing.assert_array_equal(decode_label_png(data), labels)


@pytest.mark.parametrize("bad", [np.zeros((2, 2, 3), int), np.full((2, 2), -1), np.full((2, 2), 70000), np.zeros((2, 2), float)])
def test_label_png_refuses_what_it_cannot_store(bad):
    with pytest.raises(ValueError):
        encode_label_png(bad)


def test_rows_fit_the_schema_and_hf_features_match_it():
    from datasets import Features

    from emerdiff.segmentation import Segmentation, segment_statistics

    labels = np.zeros((6, 8), np.int32)
    labels[:, 5:] = 2
    area, bbox = segment_statistics(labels, 3)
    segmentation = Segmentation(labels, np.array([[0, 2]], np.int32), np.ones((3, 4), np.float32), area, bbox,
                                np.array([0.5, 0, 0.25], np.float32))
    rows = [ok_row("a", "s3://b/x.tar", segmentation, decode_seconds=0.1, segment_seconds=1.0),
            error_row("b", "s3://b/x.tar", "undecodable image: nope")]
    batch = rows_to_batch(rows)
    assert batch.schema.equals(LABELS_SCHEMA)
    row = batch.to_pylist()[0]
    assert (row["width"], row["height"], row["num_segments"]) == (8, 6, 2)
    assert [s["id"] for s in row["segments"]] == [0, 2]
    assert row["segments"][1]["bbox"] == [5, 0, 3, 6]
    np.testing.assert_array_equal(decode_label_png(row["labels"]["bytes"]), labels)
    # The huggingface entry describes exactly these columns and types (labels as Image).
    features = Features.from_dict(HF_FEATURES)
    assert features.arrow_schema.names == LABELS_SCHEMA.names
    for name in LABELS_SCHEMA.names:
        assert features.arrow_schema.field(name).type == LABELS_SCHEMA.field(name).type, name
    assert type(features["labels"]).__name__ == "Image"


def test_file_metadata_round_trip():
    metadata = file_metadata(model="m", weights_sha256="abc", config={"k": 1}, config_hash="h", code_version="0.1")
    schema = labels_schema(metadata)
    assert parse_file_metadata(schema)["weights_sha256"] == "abc"
    assert "features" in json.loads(schema.metadata[b"huggingface"])["info"]
    with pytest.raises(ValueError, match="not an emerdiff"):
        parse_file_metadata(pa.schema([("a", pa.int32())]))


def test_error_messages_are_capped():
    row = error_row("k", "u", "undecodable image: " + "x" * 10_000)
    assert len(row["error"]) <= 2000 and row["error"].startswith("undecodable image")


@pytest.mark.parametrize("url, name", [
    ("s3://bucket/a/shard-000001.tar", "shard-000001"),
    ("/mnt/x/shard-000001.tar", "shard-000001"),
    ("https://host/p/shard-7.tar.gz?X-Amz-Signature=secret", "shard-7"),
    ("gs://b/shard weird+name.tgz", "shard_weird_name"),
    ("az://c/_hidden.tar", "hidden"),
    ("pipe:aws s3 cp s3://b/shard-3.tar -", "shard-3"),
    ("shard-000001", "shard-000001"),
])
def test_shard_names_are_stable_and_safe(url, name):
    assert shard_name(url) == name
    assert shard_name(shard_name(url)) == name


@pytest.mark.parametrize("url", ["s3://b/..", "s3://b/.tar", "/x/../"])
def test_shard_names_cannot_escape_or_vanish(url):
    with pytest.raises(ValueError, match="cannot derive"):
        shard_name(url)


def test_redact_url_drops_credentials_and_signatures():
    assert redact_url("https://user:pw@host/a.tar?sig=1&Expires=2#f") == "https://host/a.tar?REDACTED"
    assert redact_url("s3://bucket/a.tar") == "s3://bucket/a.tar"
    assert redact_url("/local/a.tar") == "/local/a.tar"
    assert "sig" not in redact_url("pipe:curl -s https://h/a.tar?sig=1")


def test_layout_names_every_file_and_hides_the_bookkeeping(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"))
    assert layout.data_path("s3://b/shard-1.tar").endswith("/out/data/shard-1.parquet")
    assert layout.marker_path("shard-1").endswith("/out/_markers/shard-1.json")
    for path in (layout.manifest_path, layout.job_path, layout.success_path, layout.markers_dir):
        assert path.rsplit("/", 1)[-1].startswith("_")
    assert layout.list_markers() == []
    layout.fs.makedirs(layout.markers_dir)
    for name in ("b", "a"):
        layout.fs.pipe_file(layout.marker_path(name), b"{}")
    assert layout.list_markers() == ["a", "b"]


def test_committed_data_files_are_full_urls_of_done_shards_only(tmp_path):
    from schemas.reading import committed_data_files

    layout = OutputLayout(str(tmp_path / "out"))
    layout.fs.makedirs(layout.markers_dir)
    layout.fs.makedirs(layout.data_dir)
    for name in ("b", "a", "pending"):
        layout.fs.pipe_file(layout.data_path(name), b"")
    for name in ("b", "a"):
        layout.fs.pipe_file(layout.marker_path(name), b"{}")
    assert committed_data_files(str(tmp_path / "out")) == [
        f"file://{tmp_path}/out/data/a.parquet", f"file://{tmp_path}/out/data/b.parquet",
    ]


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
