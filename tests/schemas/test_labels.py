"""The row schema, label PNGs and file metadata of the output contract (schemas.labels)."""

import json

import numpy as np
import pyarrow as pa
import pytest

from schemas.labels import HF_FEATURES, LABELS_SCHEMA, decode_label_png, encode_label_png, error_row, file_metadata, labels_schema, ok_row, parse_file_metadata, rows_to_batch


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
