"""The ok rows as a Hugging Face dataset: Parquet files plus a dataset card.

    DESTINATION/README.md                          dataset card: model, method config, counts
    DESTINATION/data/train-00000-of-00004.parquet  one per done shard of the output

The files carry the ``huggingface`` features entry, so ``datasets.load_dataset("parquet", ...)``
(and the Hub, after an upload of the folder) shows ``labels`` and ``lowres_labels`` as images.
"""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs
from tqdm import tqdm

from schemas.labels import (
    HF_FEATURES,
    IMAGE_STRUCT,
    SCHEMA_VERSION,
    decode_label_png,
    encode_label_png,
)
from schemas.classes import ClassTable, relabel
from schemas.layout import OutputLayout
from schemas.reading import ROW, iter_batches, output_metadata, read_markers

COLUMNS = ["key", "width", "height", "labels", "lowres_labels", "num_segments", "segments"]
SEGMENT_FIELDS_WITHOUT_EMBEDDING = ["segments.id", "segments.area", "segments.bbox", "segments.score"]
CLASS_COLUMN = "class_labels"  # with a class table: the label map in dataset-wide classes


def export_huggingface(output: str, destination: str, storage_options: dict, class_table: str | None = None,
                       embeddings: bool = True) -> int:
    """Write the dataset folder; returns the number of rows. ``embeddings=False`` leaves them out."""
    classes = ClassTable(class_table, storage_options) if class_table else None
    layout = OutputLayout(output, storage_options)
    shards = layout.list_markers()
    if not shards:
        raise ValueError(f"{output} has no finished shard to export")
    fs, root = url_to_fs(destination, **storage_options)
    fs.makedirs(f"{root}/data", exist_ok=True)
    columns = COLUMNS if embeddings else [*COLUMNS[:-1], *SEGMENT_FIELDS_WITHOUT_EMBEDDING]
    rows = segments = 0
    batches = iter_batches(output, columns, storage_options, ok_only=True, positions=True)
    with tqdm(total=len(shards), desc="export hf", unit="shard", disable=None) as bar:
        for index, (_, shard_batches) in enumerate(itertools.groupby(batches, key=lambda item: item[0])):
            path = f"{root}/data/train-{index:05d}-of-{len(shards):05d}.parquet"
            with fs.open(path, "wb") as file:
                writer = None
                for shard, batch in shard_batches:
                    table = _dataset_batch(shard, batch, classes)
                    if writer is None:
                        writer = pq.ParquetWriter(file, _with_features(table.schema), compression="zstd")
                    writer.write_batch(table)
                    rows += len(table)
                    segments += sum(n or 0 for n in table.column("num_segments").to_pylist())
                if writer is not None:
                    writer.close()
            bar.update(1)
    fs.pipe_file(f"{root}/README.md", dataset_card(output, storage_options, rows, segments, classes).encode())
    return rows


def _dataset_batch(shard: str, batch: pa.RecordBatch, classes: ClassTable | None) -> pa.RecordBatch:
    rows = batch.column(ROW).to_pylist()
    batch = batch.drop_columns(["status", ROW])
    if classes is None:
        return batch
    cells = [
        {"bytes": encode_label_png(relabel(decode_label_png(cell["bytes"]), classes.lookup(shard, row), f"row {row} of {shard}")),
         "path": None}
        for row, cell in zip(rows, batch.column("labels").to_pylist())
    ]
    return batch.append_column(pa.field(CLASS_COLUMN, IMAGE_STRUCT), pa.array(cells, IMAGE_STRUCT))


def _with_features(schema: pa.Schema) -> pa.Schema:
    features = {name: HF_FEATURES.get(name, {"_type": "Image"}) for name in schema.names}
    if "segments" in features:
        kept = {field.name for field in schema.field("segments").type.value_type}
        features["segments"] = [{name: value for name, value in HF_FEATURES["segments"][0].items() if name in kept}]
    return schema.with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def dataset_card(output: str, storage_options: dict, rows: int, segments: int, classes: ClassTable | None) -> str:
    """README.md: YAML header the Hub reads (configs), then what produced the labels and how many."""
    errors = sum(marker.stats.errors for marker in read_markers(output, storage_options))
    produced = output_metadata(output, storage_options) or {}
    class_line = (f"| dataset-wide classes | {classes.num_classes} (column `{CLASS_COLUMN}`, from `emerdiff cluster`) |\n"
                  if classes else "")
    return f"""---
pretty_name: EmerDiff pseudo-labels
task_categories:
- image-segmentation
tags:
- pseudo-labels
- emerdiff
- stable-diffusion
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---

# EmerDiff pseudo-labels

Pixel-level segments made without training by EmerDiff (Namekata et al., ICLR 2024) from Stable
Diffusion's own features. Segment ids are per image: the same id in two images means nothing
unless a dataset-wide class column is present.

| | |
|---|---|
| model | `{produced.get("model")}` |
| weights sha256 | `{produced.get("weights_sha256")}` |
| config hash | `{produced.get("config_hash")}` |
| images labelled | {rows} ({errors} that could not be labelled are left out) |
| segments | {segments} |
{class_line}| emerdiff schema version | {produced.get("schema_version", SCHEMA_VERSION)} |
| code version | `{produced.get("code_version")}` |

## Method configuration

```json
{json.dumps(produced.get("config"), indent=2, sort_keys=True)}
```

## Columns

- `key`: the sample's key in its input WebDataset shard.
- `width`, `height`: the image's size after EXIF orientation.
- `labels`: single-channel PNG of segment ids at that size.
- `lowres_labels`: the k-means map on the 16x16 feature grid, as PNG.
- `num_segments`, `segments`: per segment its `id` (value in `labels`), `area` in pixels, `bbox` (COCO x, y, width,
  height), `score` (confidence in [0, 1]) and, when exported, `embedding` (mean Stable Diffusion feature, float16).

## Loading

```python
from datasets import load_dataset

dataset = load_dataset("parquet", data_files={{"train": "data/train-*.parquet"}}, split="train")
labels = dataset[0]["labels"]  # a PIL image of segment ids
```
"""
