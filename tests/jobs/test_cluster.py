"""emerdiff cluster: dataset-wide classes for per-image segments."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from jobs.cli import main
from output_builder import export_name, segmentation, write_output


def read_table(folder) -> dict:
    table = pq.read_table(folder / "segment_classes.parquet").to_pylist()
    return {(row["key"], row["segment_id"]): row["class"] for row in table}


def test_every_segment_gets_the_class_of_its_embedding(small_output, tmp_path):
    url, maps = small_output
    out = tmp_path / "classes"
    assert main(["cluster", url, "--classes", "3", "--out", str(out), "--png"]) == 0
    table = read_table(out)
    # One row per segment of every ok row, none for the error row.
    assert set(table) == {(key, int(s)) for key, labels in maps.items() for s in np.unique(labels)}
    # Segment i's embedding lies near prototype i % 3, so the classes split segments by i % 3 exactly.
    by_prototype = {}
    for (_, segment_id), cls in table.items():
        by_prototype.setdefault(segment_id % 3, set()).add(cls)
    assert sorted(len(classes) for classes in by_prototype.values()) == [1, 1, 1]
    assert len(set().union(*by_prototype.values())) == 3
    summary = json.loads((out / "classes.json").read_text())
    assert summary["kind"] == "clusters" and summary["class_names"] is None and summary["num_unknown"] == 0
    assert summary["num_classes"] == 3 and summary["num_segments"] == len(table)
    assert sum(summary["segments_per_class"]) == len(table)
    assert np.load(out / "centroids.npy").shape == (3, 8)
    # --png: each map relabelled through the table, named <shard>/<key>.png as `export png` names it.
    for key, labels in maps.items():
        relabelled = np.asarray(Image.open(out / f"ann_dir/{export_name(key)}.png"))
        assert np.array_equal(relabelled, np.vectorize(lambda s: table[(key, int(s))])(labels))


def test_same_seed_same_table(small_output, tmp_path):
    url, _ = small_output
    for name in ("one", "two"):
        assert main(["cluster", url, "--classes", "4", "--seed", "7", "--out", str(tmp_path / name)]) == 0
    assert read_table(tmp_path / "one") == read_table(tmp_path / "two")
    assert np.array_equal(np.load(tmp_path / "one/centroids.npy"), np.load(tmp_path / "two/centroids.npy"))


def test_default_folder_sits_beside_the_output(small_output):
    url, _ = small_output
    assert main(["cluster", url, "--classes", "2"]) == 0
    assert read_table(Path(f"{url}-classes2"))


def test_more_classes_than_segments_is_an_error(small_output, tmp_path, caplog):
    url, _ = small_output
    assert main(["cluster", url, "--classes", "200", "--out", str(tmp_path / "x")]) == 2
    assert "fewer classes" in caplog.text
    assert main(["cluster", url, "--classes", "256", "--out", str(tmp_path / "x")]) == 2
    assert "--classes must be at most 255" in caplog.text


def test_the_table_names_rows_by_shard_and_position_not_by_key(tmp_path):
    # "x" in both shards, and twice in the first: four rows, each with its own segments and classes.
    near = {0: [1.0, 0, 0], 1: [0, 1.0, 0]}
    rows = {
        "shard-000000": [("x", segmentation([[0, 0]], near, num_masks=2)), ("y", segmentation([[1, 1]], near, num_masks=2)),
                         ("x", segmentation([[0, 1]], near, num_masks=2))],
        "shard-000001": [("x", segmentation([[1, 1]], near, num_masks=2))],
    }
    write_output(str(tmp_path / "out"), rows)
    assert main(["cluster", str(tmp_path / "out"), "--classes", "2", "--out", str(tmp_path / "classes")]) == 0
    table = pq.read_table(tmp_path / "classes/segment_classes.parquet").to_pylist()
    assert [(r["shard"], r["row"], r["key"], r["segment_id"]) for r in table] == [
        ("shard-000000", 0, "x", 0), ("shard-000000", 1, "y", 1), ("shard-000000", 2, "x", 0),
        ("shard-000000", 2, "x", 1), ("shard-000001", 0, "x", 1)]
    by_segment = {(r["shard"], r["row"], r["segment_id"]): r["class"] for r in table}
    assert by_segment[("shard-000000", 2, 0)] == by_segment[("shard-000000", 0, 0)]  # same embedding, same class
    assert by_segment[("shard-000000", 2, 1)] == by_segment[("shard-000001", 0, 1)] != by_segment[("shard-000000", 0, 0)]
