"""The row contract of ``OUTPUT/data/<shard>.parquet``: one row per input sample.

Defined once here and versioned: the labelling job writes it, and every tool that reads an output
(preview, evaluate, export, cluster, inspect, DuckDB, Hugging Face ``datasets``) relies on it.
Bump ``SCHEMA_VERSION`` on any change a reader could notice.

Label maps are stored as single-channel PNG bytes inside ``struct<bytes, path>``, the layout
Hugging Face ``datasets`` decodes as an ``Image`` feature; the ``huggingface`` entry of the file
metadata says so explicitly, so ``load_dataset("parquet", ...)`` shows PIL images.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

# 2: segments may carry `clip_embedding` (outputs labelled with --clip-model); a version-1 file reads
# as a version-2 file without it, and outputs labelled without CLIP have exactly version 1's columns.
SCHEMA_VERSION = 2
STATUS_OK = "ok"
STATUS_ERROR = "error"
METADATA_KEY = b"emerdiff"
MAX_ERROR_LENGTH = 2000  # a row holds the reason, not a whole traceback

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

SEGMENT_FIELDS = [
    ("id", pa.int32()),  # label value in `labels`, 0..K-1
    ("area", pa.int64()),  # pixels at the original size
    ("bbox", pa.list_(pa.int32())),  # COCO order: x, y, width, height, at the original size
    ("score", pa.float32()),  # confidence in [0, 1]; see emerdiff.segmentation.Segmentation
    ("embedding", pa.list_(pa.float16())),  # mean query feature over the segment (spec step 12)
]
SEGMENT_STRUCT = pa.struct(SEGMENT_FIELDS)
# With --clip-model: the segment's MaskCLIP embedding, L2-normalised (docs/method.md, "Names for segments").
CLIP_EMBEDDING = "clip_embedding"
SEGMENT_STRUCT_WITH_CLIP = pa.struct([*SEGMENT_FIELDS, (CLIP_EMBEDDING, pa.list_(pa.float16()))])

LABELS_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),  # the sample's __key__ in its shard
    pa.field("shard", pa.string(), nullable=False),  # source shard URL, credentials and query string redacted
    pa.field("status", pa.string(), nullable=False),  # "ok" or "error"
    pa.field("error", pa.string()),  # "<reason>: <detail>" when status is "error"
    pa.field("width", pa.int32()),  # original image size (after EXIF orientation); null if undecodable
    pa.field("height", pa.int32()),
    pa.field("labels", IMAGE_STRUCT),  # label map as PNG at width x height
    pa.field("lowres_labels", IMAGE_STRUCT),  # the k-means map on the feature grid, as PNG
    pa.field("num_segments", pa.int32()),
    pa.field("segments", pa.list_(SEGMENT_STRUCT)),
    pa.field("decode_seconds", pa.float32()),  # reading + decoding this sample's image
    pa.field("segment_seconds", pa.float32()),  # its share of the batch's model time
])

# The `huggingface` metadata entry: the same columns as `datasets` features, with the two PNG
# columns declared as Image (a JSON list means a list of that feature, which every version reads).
_VALUE = {"string": "string", "int32": "int32", "int64": "int64", "float32": "float32", "float16": "float16"}


def _value(dtype: str) -> dict:
    return {"dtype": _VALUE[dtype], "_type": "Value"}


HF_FEATURES = {
    "key": _value("string"),
    "shard": _value("string"),
    "status": _value("string"),
    "error": _value("string"),
    "width": _value("int32"),
    "height": _value("int32"),
    "labels": {"_type": "Image"},
    "lowres_labels": {"_type": "Image"},
    "num_segments": _value("int32"),
    "segments": [{
        "id": _value("int32"),
        "area": _value("int64"),
        "bbox": [_value("int32")],
        "score": _value("float32"),
        "embedding": [_value("float16")],
    }],
    "decode_seconds": _value("float32"),
    "segment_seconds": _value("float32"),
}


def hf_features(clip: bool = False) -> dict:
    """The ``huggingface`` features of a data file, with the segments' CLIP embeddings when it has them."""
    if not clip:
        return HF_FEATURES
    segments = {**HF_FEATURES["segments"][0], CLIP_EMBEDDING: [_value("float16")]}
    return {**HF_FEATURES, "segments": [segments]}


# -- label maps as PNG ---------------------------------------------------------------------------


def encode_label_png(labels: np.ndarray) -> bytes:
    """An (H, W) map of non-negative ids as a single-channel PNG: 8-bit up to id 255, else 16-bit."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty (H, W) array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer ids, got dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high > 65535:
        raise ValueError(f"label ids must lie in 0..65535 to fit a PNG, got {low}..{high}")
    pixels = labels.astype(np.uint8 if high <= 255 else np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_label_png(data: bytes) -> np.ndarray:
    """The (H, W) int32 id map stored by ``encode_label_png``."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "I;16", "I;16B", "I", "P"):
            raise ValueError(f"not a label PNG: expected one 8- or 16-bit channel, got mode {image.mode!r}")
        return np.asarray(image).astype(np.int32)


def _image_cell(labels: np.ndarray) -> dict:
    return {"bytes": encode_label_png(labels), "path": None}


# -- rows ----------------------------------------------------------------------------------------


def ok_row(key: str, shard: str, segmentation: Any, *, decode_seconds: float | None = None,
           segment_seconds: float | None = None) -> dict:
    """The row of a labelled sample; ``segmentation`` is an ``emerdiff.Segmentation``."""
    height, width = segmentation.labels.shape
    return {
        "key": key,
        "shard": shard,
        "status": STATUS_OK,
        "error": None,
        "width": width,
        "height": height,
        "labels": _image_cell(segmentation.labels),
        "lowres_labels": _image_cell(segmentation.lowres_labels),
        "num_segments": segmentation.num_segments,
        "segments": [_segment_cell(segment) for segment in segmentation.segments],
        "decode_seconds": decode_seconds,
        "segment_seconds": segment_seconds,
    }


def _segment_cell(segment: Any) -> dict:
    cell = {
        "id": segment.id,
        "area": segment.area,
        "bbox": list(segment.bbox),
        "score": segment.score,
        "embedding": np.asarray(segment.embedding, dtype=np.float16),
    }
    if segment.clip_embedding is not None:
        cell[CLIP_EMBEDDING] = np.asarray(segment.clip_embedding, dtype=np.float16)
    return cell


def error_row(key: str, shard: str, error: str, *, width: int | None = None, height: int | None = None,
              decode_seconds: float | None = None, segment_seconds: float | None = None) -> dict:
    """The row of a sample that could not be labelled; ``error`` reads "<reason>: <detail>"."""
    if len(error) > MAX_ERROR_LENGTH:
        error = error[: MAX_ERROR_LENGTH - 3] + "..."
    return {
        "key": key,
        "shard": shard,
        "status": STATUS_ERROR,
        "error": error,
        "width": width,
        "height": height,
        "labels": None,
        "lowres_labels": None,
        "num_segments": None,
        "segments": None,
        "decode_seconds": decode_seconds,
        "segment_seconds": segment_seconds,
    }


def error_reason(error: str) -> str:
    """The reason part of an error message ("undecodable image: ..." -> "undecodable image")."""
    return error.split(":", 1)[0].strip()


# -- file-level metadata ---------------------------------------------------------------------------


def file_metadata(*, model: str, weights_sha256: str | None, config: dict, config_hash: str,
                  code_version: str, clip: dict | None = None) -> dict[bytes, bytes]:
    """Schema metadata of every data file: what produced it, and the HF features entry.

    ``clip``: the CLIP model's record (``emerdiff.clip.SegmentCLIP.info``, URL redacted) when the
    segments carry CLIP embeddings; without it the entry is absent, as in version 1.
    """
    emerdiff = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "weights_sha256": weights_sha256,
        "config": config,
        "config_hash": config_hash,
        "code_version": code_version,
        **({"clip": clip} if clip is not None else {}),
    }
    return {
        METADATA_KEY: json.dumps(emerdiff, sort_keys=True).encode(),
        b"huggingface": json.dumps({"info": {"features": hf_features(clip is not None)}}).encode(),
    }


def labels_schema(metadata: dict[bytes, bytes] | None = None, clip: bool = False) -> pa.Schema:
    """``LABELS_SCHEMA`` (its segments with ``clip_embedding`` when ``clip``) carrying the given file metadata."""
    schema = LABELS_SCHEMA
    if clip:
        index = schema.get_field_index("segments")
        schema = schema.set(index, pa.field("segments", pa.list_(SEGMENT_STRUCT_WITH_CLIP)))
    return schema.with_metadata(metadata) if metadata else schema


def parse_file_metadata(schema: pa.Schema) -> dict:
    """The ``emerdiff`` metadata of a data file's schema; raises ValueError when it is not ours."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError("not an emerdiff labels file: its Parquet metadata has no 'emerdiff' entry")
    return json.loads(raw)


def rows_to_batch(rows: list[dict], schema: pa.Schema = LABELS_SCHEMA) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)
