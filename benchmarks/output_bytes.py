"""Bytes per image of a labelling output, as written and at Stable Diffusion's embedding width.

    python -m benchmarks.output_bytes OUTPUT [--embedding-width 1280] [--json FILE]

Reads the ok rows of the done shards of OUTPUT (made with any model, `--model tiny` included) and
writes them again with the job's own Parquet writer, in memory, three ways:

  as written               the rows unchanged
  sd width                 each segment's embedding replaced by --embedding-width float16 values
                           (SD 1.x: 1280), drawn at random: feature values' low bits compress as badly
  sd width, coarse labels  also each label map replaced by the row's own low-resolution k-means map,
                           resized to the image (nearest): the same segments, boundaries on the grid

A random model's label maps are speckled, so `sd width` bounds what SD's label PNGs take from above
and `sd width, coarse labels` from below; real masks lie in between. The report gives bytes per
row by column and the storage a million such images take.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq

from pipeline.writer import ParquetShardWriter
from schemas.labels import LABELS_SCHEMA, STATUS_OK, decode_label_png, encode_label_png
from schemas.reading import iter_rows

SD_EMBEDDING_WIDTH = 1280  # channels of SD 1.x's feature layer, up_blocks.1
ROWS_PER_ROW_GROUP = 128  # the job's default (LabelJobConfig.rows_per_row_group)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.output_bytes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="A labelling output (local path or fsspec URL).")
    parser.add_argument("--embedding-width", type=int, default=SD_EMBEDDING_WIDTH)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="Write the report here too.")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    rows = [row for row in iter_rows(args.output) if row["status"] == STATUS_OK]
    if not rows:
        raise SystemExit(f"{args.output} has no ok row in a done shard")
    rng = np.random.default_rng(args.seed)
    sd_width = [with_embeddings(row, args.embedding_width, rng) for row in rows]
    variants = {"as written": rows, "sd width": sd_width, "sd width, coarse labels": [coarse(row) for row in sd_width]}
    report = {"output": args.output, "rows": len(rows), "embedding_width": args.embedding_width,
              "mean_segments": float(np.mean([row["num_segments"] for row in rows])),
              "mean_pixels": float(np.mean([row["width"] * row["height"] for row in rows]))}
    for name, variant in variants.items():
        per_row = bytes_per_row(variant)
        report[name] = {"bytes_per_row": per_row, "gb_per_million_images": per_row["file"] * 1e6 / 1e9}
    return report


def with_embeddings(row: dict, width: int, rng: np.random.Generator) -> dict:
    segments = [{**segment, "embedding": rng.standard_normal(width).astype(np.float16).tolist()}
                for segment in row["segments"]]
    return {**row, "segments": segments}


def coarse(row: dict) -> dict:
    """The row with its label map replaced by the low-resolution map resized to the image (nearest)."""
    grid = decode_label_png(row["lowres_labels"]["bytes"])
    ys = np.arange(row["height"]) * grid.shape[0] // row["height"]
    xs = np.arange(row["width"]) * grid.shape[1] // row["width"]
    return {**row, "labels": {"bytes": encode_label_png(grid[ys[:, None], xs[None, :]]), "path": None}}


def bytes_per_row(rows: list[dict]) -> dict[str, float]:
    """The file's bytes and each top-level column's compressed bytes, per row, as the job writes them."""
    fs, path = fsspec.filesystem("memory"), "/emerdiff-output-bytes/data.parquet"
    writer = ParquetShardWriter(fs, path, LABELS_SCHEMA, ROWS_PER_ROW_GROUP)
    for row in rows:
        writer.write(row)
    size = writer.finish()
    writer.commit()
    with fs.open(path, "rb") as file:
        metadata = pq.ParquetFile(file).metadata
    fs.rm(path)
    columns = Counter()
    for group in range(metadata.num_row_groups):
        for index in range(metadata.num_columns):
            column = metadata.row_group(group).column(index)
            columns[column.path_in_schema.split(".")[0]] += column.total_compressed_size
    return {"file": size / len(rows), **{name: total / len(rows) for name, total in columns.most_common()}}


def print_report(report: dict) -> None:
    print(f"{report['rows']} ok rows of {report['output']}: {report['mean_segments']:.1f} segments and "
          f"{report['mean_pixels'] / 1e6:.3f} MP per image on average; embeddings at {report['embedding_width']} values")
    names = ["as written", "sd width", "sd width, coarse labels"]
    print(f"{'bytes per row':<18}" + "".join(f"{name:>26}" for name in names))
    for column in report["as written"]["bytes_per_row"]:
        print(f"{column:<18}" + "".join(f"{report[name]['bytes_per_row'][column]:>26,.0f}" for name in names))
    print(f"{'GB per million':<18}" + "".join(f"{report[name]['gb_per_million_images']:>26,.1f}" for name in names))


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
