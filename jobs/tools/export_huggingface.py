"""The exported rows as a Hugging Face dataset: Parquet files plus a dataset card.

    DESTINATION/README.md                          dataset card: model, method config, counts, classes
    DESTINATION/data/train-00000-of-00004.parquet  one per done shard of the output

The files carry the ``huggingface`` features entry, so ``datasets.load_dataset("parquet", ...)``
(and the Hub, after an upload of the folder) shows ``image`` (the input shard's image member, byte
for byte), ``labels`` and ``lowres_labels`` as images; with a class table, ``class_labels`` (the
class map) too, and ``segment_classes`` as class labels with the table's names. ``--no-images``
leaves the image column out.
"""

from __future__ import annotations

import itertools
import json

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.tools.export import ExportBatch, ExportRun
from schemas.classes import UNKNOWN
from schemas.labels import HF_FEATURES, IMAGE_STRUCT, SCHEMA_VERSION, hf_features
from schemas.reading import ROW, flatten_segments, output_metadata

COLUMNS = ["width", "height", "labels", "lowres_labels", "num_segments", "segments"]
SEGMENT_FIELDS_WITHOUT_EMBEDDING = ["segments.id", "segments.area", "segments.bbox", "segments.score"]
IMAGE_COLUMN = "image"
CLASS_COLUMN = "class_labels"  # with a class table: the label map in dataset-wide classes
SEGMENT_CLASS_COLUMN = "segment_classes"  # with a class table: each segment's class, -1 for none
NO_CLASS = -1  # datasets.ClassLabel's value for "no label"


def export_huggingface(run: ExportRun) -> None:
    columns = COLUMNS if run.config.embeddings else [*COLUMNS[:-1], *SEGMENT_FIELDS_WITHOUT_EMBEDDING]
    numbers = {shard: index for index, shard in enumerate(run.shards)}
    segments = 0
    batches = run.batches(columns, images=run.config.with_images, named=False)
    for shard, shard_batches in itertools.groupby(batches, key=lambda batch: batch.shard):
        relative = f"data/train-{numbers[shard]:05d}-of-{len(run.shards):05d}.parquet"
        with run.pending(relative) as sink:
            writer = None
            for batch in shard_batches:
                table = _dataset_batch(run, batch)
                writer = writer or pq.ParquetWriter(sink, _with_features(table.schema, run), compression="zstd")
                writer.write_batch(table)
                segments += sum(n or 0 for n in table.column("num_segments").to_pylist())
            writer.close()
        run.summary.files.append(relative)
    run.write_files({"README.md": dataset_card(run, segments).encode()})


def _dataset_batch(run: ExportRun, batch: ExportBatch) -> pa.RecordBatch:
    table = batch.rows.drop_columns(["status", ROW])
    if batch.images is not None:
        cells = [{"bytes": image.data, "path": None} for image in batch.images]
        table = table.add_column(1, pa.field(IMAGE_COLUMN, IMAGE_STRUCT), pa.array(cells, IMAGE_STRUCT))
    if run.classes is None:
        return table
    rows = batch.column(ROW)
    class_maps = [{"bytes": run.label_png(batch.shard, row, cell["bytes"]), "path": None}
                  for row, cell in zip(rows, batch.column("labels"))]
    segments = flatten_segments(batch.rows)
    segment_classes = []
    for index, row in enumerate(rows):
        classes = [c for c, _ in run.segment_classes(batch.shard, row, segments.of_row(index).id)]
        segment_classes.append([NO_CLASS if c == UNKNOWN else c for c in classes])
    table = table.append_column(pa.field(CLASS_COLUMN, IMAGE_STRUCT), pa.array(class_maps, IMAGE_STRUCT))
    return table.append_column(SEGMENT_CLASS_COLUMN, pa.array(segment_classes, pa.list_(pa.int64())))


def _with_features(schema: pa.Schema, run: ExportRun) -> pa.Schema:
    features = {name: HF_FEATURES.get(name) for name in schema.names}
    features.update({name: {"_type": "Image"} for name in (IMAGE_COLUMN, CLASS_COLUMN) if name in features})
    if SEGMENT_CLASS_COLUMN in features:
        features[SEGMENT_CLASS_COLUMN] = [{"_type": "ClassLabel", "names": run.class_names()}]
    kept = {field.name for field in schema.field("segments").type.value_type}
    every_field = hf_features(clip=True)["segments"][0]  # the CLIP embeddings, when the output has them
    features["segments"] = [{name: value for name, value in every_field.items() if name in kept}]
    return schema.with_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def dataset_card(run: ExportRun, segments: int) -> str:
    """README.md: YAML header the Hub reads (configs), then what produced the labels and how many."""
    produced = output_metadata(run.config.output, run.config.storage_options) or {}
    summary = run.summary
    class_lines = ""
    if run.classes is not None:
        names = ", ".join(f"{c} `{name}`" for c, name in enumerate(run.class_names()))
        class_lines = (f"| dataset-wide classes | {run.classes.num_classes} (columns `{CLASS_COLUMN}`, "
                       f"`{SEGMENT_CLASS_COLUMN}`; from `{summary.class_table}`) |\n| class names | {names} |\n")
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
| images labelled | {summary.rows} ({summary.error_rows} that could not be labelled are left out) |
| segments | {segments} |
{class_lines}| emerdiff schema version | {produced.get("schema_version", SCHEMA_VERSION)} |
| code version | `{produced.get("code_version")}` |

## Method configuration

```json
{json.dumps(produced.get("config"), indent=2, sort_keys=True)}
```

## Columns

- `key`: the sample's key in its input WebDataset shard.
- `image`: the image as stored in the input shard (absent when exported with `--no-images`).
- `width`, `height`: the image's size after EXIF orientation.
- `labels`: single-channel PNG of segment ids at that size.
- `lowres_labels`: the k-means map on the 16x16 feature grid, as PNG.
- `num_segments`, `segments`: per segment its `id` (value in `labels`), `area` in pixels, `bbox` (COCO x, y, width,
  height), `score` (confidence in [0, 1]) and, when exported, `embedding` (mean Stable Diffusion feature, float16).
- With a class table: `class_labels`, the label map in classes (PNG, {UNKNOWN} = no class), and `segment_classes`,
  each segment's class in the order of `segments` ({NO_CLASS} = no class).

## Loading

```python
from datasets import load_dataset

dataset = load_dataset("parquet", data_files={{"train": "data/train-*.parquet"}}, split="train")
row = dataset[0]
image, labels = row["image"], row["labels"]  # PIL images: the photo and its segment ids
```
"""
