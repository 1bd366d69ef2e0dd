"""Export a labelling output for training code.

  png   ann_dir/<key>.png label maps, the folder layout mmsegmentation and detectron2 read
  coco  annotations.json, one annotation with an RLE mask per segment (pycocotools format)
  hf    a Hugging Face dataset: data/*.parquet (labels as Image) and a README.md dataset card

Values are per-image segment ids; with --clusters (a folder from `emerdiff cluster`) they become
dataset-wide classes (png, coco) or an extra class_labels column (hf).

    emerdiff export out/ --format png --out export/
"""

from __future__ import annotations

import argparse
import importlib
import logging

from jobs.options import add_storage_arguments

logger = logging.getLogger(__name__)

# format -> (module, function); imported on use so that `emerdiff --help` stays fast.
EXPORTERS = {
    "png": ("jobs.tools.export_png", "export_png"),
    "coco": ("jobs.tools.export_coco", "export_coco"),
    "hf": ("jobs.tools.export_huggingface", "export_huggingface"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="Labelling output folder (local path or fsspec URL).")
    parser.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="What to write.")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder to write the export to.")
    parser.add_argument("--clusters", metavar="DIR",
                        help="Class table folder from `emerdiff cluster`: export dataset-wide classes, not segment ids.")
    parser.add_argument("--no-embeddings", dest="embeddings", action="store_false",
                        help="hf only: leave the segment embeddings out (most of the bytes).")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    module, function = EXPORTERS[args.format]
    exporter = getattr(importlib.import_module(module), function)
    options = {"embeddings": args.embeddings} if args.format == "hf" else {}
    try:
        count = exporter(args.output, args.out, args.storage_options, args.clusters, **options)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("exported %d %s to %s", count, "annotations" if args.format == "coco" else "rows", args.out)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.export"))
