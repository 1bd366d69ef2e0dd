"""One shard end to end: rows in tar order, then the marker."""

import json

import pyarrow.parquet as pq

from label_helpers import tar_bytes, write_shards
from pipeline.labeler import ShardLabeler
from pipeline.tasks import ShardTask
from schemas.labels import decode_label_png


def test_labeller_writes_rows_then_marker_and_keeps_bad_samples(tmp_path, make_job, make_samples, photo_jpegs, fast_segmenter):
    samples = make_samples(0, 2) + [{"__key__": "bad", "jpg": b"garbage"}, {"__key__": "nojpg", "txt": b"x"}]
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": samples})
    job = make_job([url], tmp_path / "out", executor="local")
    labeler = ShardLabeler(fast_segmenter, job)
    events = list(labeler.run(ShardTask(url)))
    marker = events[-1]
    assert events[-2].images == 4 and events[-2].shard_bytes == len(tar_bytes(samples))
    assert (marker.stats.rows, marker.stats.ok, marker.stats.errors) == (4, 2, 2)
    assert marker.stats.error_reasons == {"undecodable image": 1, "missing image member": 1}
    table = pq.read_table(tmp_path / "out" / "data" / "shard-000000.parquet")
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == ["s00-000", "s00-001", "bad", "nojpg"]  # input order
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert rows[2]["error"].startswith("undecodable image: ") and rows[2]["labels"] is None
    labels = decode_label_png(rows[0]["labels"]["bytes"])
    assert labels.shape == (rows[0]["height"], rows[0]["width"]) == (64, 96)
    assert set(labels.ravel()) == {s["id"] for s in rows[0]["segments"]}
    assert len(rows[0]["segments"][0]["embedding"]) == 64  # the tiny UNet's query width
    assert json.loads(table.schema.metadata[b"emerdiff"])["config_hash"] == job.method.config_hash
