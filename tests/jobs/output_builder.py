"""Labelling outputs for the tools' tests, written with the schemas' own row builders.

No Ray and no model: rows come from hand-made label maps (or any ``Segmentation``), and the files
are laid out exactly as ``schemas.layout`` describes, markers and ``_job.json`` included.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from emerdiff.segmentation import Segmentation, segment_statistics
from label_helpers import write_shards
from pipeline.config import LabelJobConfig
from pipeline.sources import ShardInfo, ShardReadError, shard_info
from schemas.labels import SCHEMA_VERSION, error_reason, error_row, file_metadata, labels_schema, ok_row, rows_to_batch
from schemas.layout import OutputLayout, data_file_key
from schemas.markers import ShardMarker, ShardStats, manifest_row_done, manifest_row_failed, manifest_table
from schemas.urls import options_for

CONFIG = {"num_masks": 4, "seed": 0}
def segmentation(labels, embeddings: dict[int, list[float]], num_masks: int = 4, score: float = 0.5) -> Segmentation:
    """A Segmentation of an (H, W) id map whose segment ``i`` has embedding ``embeddings[i]``."""
    labels = np.asarray(labels, dtype=np.int32)
    dim = len(next(iter(embeddings.values())))
    table = np.zeros((num_masks, dim), dtype=np.float32)
    for segment_id, vector in embeddings.items():
        table[segment_id] = vector
    area, bbox = segment_statistics(labels, num_masks)
    return Segmentation(
        labels=labels, lowres_labels=labels[::2, ::2].copy(), embeddings=table, area=area, bbox=bbox,
        score=np.where(area > 0, score, 0).astype(np.float32),
    )


def write_output(url: str, shards: dict[str, list], storage_options: dict | None = None, *,
                 inputs: list[str] | None = None, failed: dict[str, str] | None = None,
                 interrupted: dict[str, list] | None = None, shard_urls: dict[str, str] | None = None,
                 wall_seconds: float = 2.0) -> None:
    """Write an output whose done shards hold ``shards[name]``: (key, Segmentation) or (key, error).

    ``inputs`` become the job's inputs (default: one URL per shard); ``failed`` shards appear in the
    manifest; ``interrupted`` shards get a data file but no marker. ``shard_urls`` names the input
    shard of each (default: a file that does not exist).
    """
    layout = OutputLayout(url, storage_options)
    metadata = file_metadata(model="tiny", weights_sha256="0" * 64, config=CONFIG, config_hash="c0ffee",
                             code_version="test")
    names = {**shards, **(failed or {}), **(interrupted or {})}
    shard_urls = {name: f"{url}-inputs/{name}.tar" for name in names} | (shard_urls or {})
    layout.fs.makedirs(layout.data_dir, exist_ok=True)
    layout.fs.makedirs(layout.markers_dir, exist_ok=True)
    manifest = []
    for name, samples in shards.items():
        rows = [_row(key, shard_urls[name], value) for key, value in samples]
        size = _write_data(layout, name, rows, metadata)
        marker = _marker(name, shard_urls[name], rows, size, wall_seconds, _input_info(shard_urls[name], storage_options))
        layout.fs.pipe_file(layout.marker_path(name), marker.to_json().encode())
        manifest.append(manifest_row_done(marker))
    for name, samples in (interrupted or {}).items():
        _write_data(layout, name, [_row(key, shard_urls[name], value) for key, value in samples], metadata)
    for name, error in (failed or {}).items():
        manifest.append(manifest_row_failed(name, shard_urls[name], error, attempts=3))
    layout.fs.pipe_file(layout.job_path, json.dumps(_job_record(url, inputs or sorted(shard_urls.values()))).encode())
    buffer = io.BytesIO()
    pq.write_table(manifest_table(manifest), buffer)
    layout.fs.pipe_file(layout.manifest_path, buffer.getvalue())
    if not failed and not interrupted:
        layout.fs.pipe_file(layout.success_path, b"")


def _job_record(url: str, inputs: list[str]) -> dict:
    # The shape pipeline.driver writes to _job.json.
    job = LabelJobConfig(inputs=tuple(inputs), output=url, model="tiny")
    return {
        "kind": "emerdiff.label", "schema_version": SCHEMA_VERSION, "model": "tiny", "weights_sha256": "0" * 64,
        "model_info": None, "config": CONFIG, "config_hash": "c0ffee", "code_version": "test",
        "job": job.public_dict(), "started_at": "2026-01-01T00:00:00+00:00",
    }


def _row(key: str, shard: str, value) -> dict:
    if isinstance(value, str):
        return error_row(key, shard, value)
    return ok_row(key, shard, value, decode_seconds=0.01, segment_seconds=0.5)


def _write_data(layout: OutputLayout, name: str, rows: list[dict], metadata: dict) -> int:
    schema = labels_schema(metadata)
    buffer = io.BytesIO()
    # Two rows per row group, so readers must cross row-group boundaries.
    pq.write_table(pa.Table.from_batches([rows_to_batch(rows, schema)], schema=schema), buffer, row_group_size=2)
    layout.fs.pipe_file(layout.data_path(name), buffer.getvalue())
    return len(buffer.getvalue())


def _input_info(url: str, storage_options: dict | None) -> ShardInfo:
    # What the labeller records of an input shard; nothing for one that does not exist.
    try:
        return shard_info(url, options_for(url, storage_options))
    except ShardReadError:
        return ShardInfo(size=None, etag=None)


def _marker(name: str, url: str, rows: list[dict], size: int, wall_seconds: float, info: ShardInfo) -> ShardMarker:
    stats = ShardStats(wall_seconds=wall_seconds)
    for row in rows:
        stats.count_row(row["status"] == "ok", error_reason(row["error"]) if row["error"] else None)
    return ShardMarker(
        shard=name, url=url, data_file=data_file_key(name), data_bytes=size, input_size=info.size, input_etag=info.etag,
        config_hash="c0ffee", model="tiny", weights_sha256="0" * 64, schema_version=SCHEMA_VERSION,
        code_version="test", attempt=1, worker="test:1", started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:00:02Z", stats=stats,
    )


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- outputs shared by several tests -------------------------------------------------------------

PROTOTYPES = np.eye(3, 8)  # three well-separated embedding directions


def blocky_labels(seed: int, shape=(6, 8), num_masks: int = 4) -> np.ndarray:
    """A label map of 2x2 blocks with random ids, so segments have varied shapes and sizes."""
    generator = np.random.default_rng(seed)
    blocks = generator.integers(0, num_masks, (shape[0] // 2, shape[1] // 2))
    return np.kron(blocks, np.ones((2, 2), dtype=int))


def build_small_output(url: str, storage_options=None, inputs: str | None = None) -> dict:
    """Two shards: 5 ok rows (segment i's embedding near prototype i % 3) and 1 error row.

    With ``inputs`` (a folder URL), the rows are labelled from input shards written there
    (``input_samples``); without, their input shards do not exist. Returns key -> label map of the ok rows.
    """
    generator = np.random.default_rng(0)
    maps, shards = {}, {"shard-000000": [], "shard-000001": []}
    for index in range(5):
        key = f"img{index}"
        labels = blocky_labels(index)
        embeddings = {int(i): PROTOTYPES[i % 3] + generator.normal(0, 0.01, 8) for i in np.unique(labels)}
        shards[f"shard-00000{index % 2}"].append((key, segmentation(labels, embeddings, score=0.25 + 0.1 * index)))
        maps[key] = labels
    shards["shard-000001"].append(("broken", "undecodable image: cannot identify image file"))
    shard_urls = None
    if inputs is not None:
        samples = {f"{name}.tar": [input_sample(key, maps.get(key)) for key, _ in rows] for name, rows in shards.items()}
        shard_urls = dict(zip(shards, write_shards(inputs, samples, storage_options)))
    write_output(url, shards, storage_options, shard_urls=shard_urls)
    return maps


# Segment id -> colour of the input images of ``build_small_output``: a pixel's colour gives its label.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200]], dtype=np.uint8)
JPEG_KEY = "img3"  # the one input image stored as JPEG (lossy: its colours are only near PALETTE's)


def input_sample(key: str, labels: np.ndarray | None) -> dict:
    """The input sample of a row: its label map painted with PALETTE (PNG, or JPEG for JPEG_KEY);
    without labels (an error row), bytes that are no image."""
    if labels is None:
        return {"__key__": key, "jpg": b"not an image"}
    buffer = io.BytesIO()
    Image.fromarray(PALETTE[labels]).save(buffer, format="JPEG" if key == JPEG_KEY else "PNG")
    return {"__key__": key, "jpg" if key == JPEG_KEY else "png": buffer.getvalue()}


def input_member(key: str, labels: np.ndarray) -> tuple[str, bytes]:
    """(extension, bytes) of an ok row's image member in its input shard."""
    [(extension, data)] = [(name, value) for name, value in input_sample(key, labels).items() if name != "__key__"]
    return extension, data


def export_name(key: str) -> str:
    """The name exports give an ok row of build_small_output, whose shard i % 2 holds img<i>."""
    return f"shard-00000{int(key[-1]) % 2}/{key}"


A, B, OTHER = [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]

# Ground truth, 2 x 4, two classes.
TRUTH = {
    "a": [[0, 0, 1, 1], [0, 0, 1, 1]],
    "b": [[0, 0, 0, 1], [0, 0, 1, 1]],
    "c": [[0, 0, 0, 0], [1, 1, 1, 1]],  # its labelling failed
    "d": [[0, 0, 0, 0], [1, 1, 1, 1]],  # never labelled
}
HALVES = [[0, 0, 1, 1], [0, 0, 1, 1]]  # segment 0 = left half, 1 = right half


def ground_truth_folders(root) -> tuple[str, str]:
    """Folders of blank 4 x 2 images and their ground truth (``TRUTH``) under ``root``."""
    images, truth = root / "images", root / "truth"
    images.mkdir()
    truth.mkdir()
    for key, classes in TRUTH.items():
        Image.new("RGB", (4, 2)).save(images / f"{key}.png")
        Image.fromarray(np.array(classes, dtype=np.uint8)).save(truth / f"{key}.png")
    return str(images), str(truth)


def labelled_output(url: str, storage_options=None) -> None:
    """The output scored by hand in test_evaluate.py."""
    # Segments of "a" follow the truth (embeddings A, B); in "b" both halves get embedding A, the
    # right half wrongly. "e" has no ground truth: its odd embedding must not sway the clustering.
    # The shards are those `ground_truth_shards` makes (two images each, keys in order a, b | c, d).
    write_output(url, {
        "shard-000000": [("a", segmentation(HALVES, {0: A, 1: B})),
                         ("b", segmentation(np.array(HALVES) + 2, {2: A, 3: A}))],
        "shard-000001": [("c", "undecodable image: broken"), ("e", segmentation(HALVES, {0: OTHER, 1: OTHER}))],
    }, storage_options)
