"""mIoU and pixel accuracy of a labelling output against ground truth, per protocol.

Ground truth is <key>.seg.png in WebDataset shards (class ids, --ignore-index for unlabelled), as
`emerdiff make-shards --gt` writes them, matched to the output's rows by key. Protocols:

  per-image-hungarian  each image's segments matched to the classes on their own (DiffSeg, DiffCut)
  dataset-hungarian    segment embeddings of the whole set clustered into C classes, then one
                       matching for the dataset (STEGO; EmerDiff reports 26.6 mIoU on COCO-Stuff-27)

    emerdiff evaluate out/ --gt shards/ --classes 27 --json scores.json
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import add_storage_arguments
from jobs.tools.protocols import PROTOCOLS
from jobs.tools.reports import write_json

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="Labelling output folder (local path or fsspec URL).")
    parser.add_argument("--gt", required=True, metavar="SHARDS",
                        help="Ground-truth shards: a folder of .tar files, a glob, a brace pattern or one shard.")
    parser.add_argument("--classes", type=int, required=True, metavar="C", help="Number of ground-truth classes (ids 0..C-1).")
    parser.add_argument("--ignore-index", type=int, default=255, help="Ground-truth value of unlabelled pixels (default: 255).")
    parser.add_argument("--protocol", dest="protocols", action="append", choices=PROTOCOLS,
                        help="Protocol to report; repeat for several (default: all).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the dataset-level k-means (default: 0).")
    parser.add_argument("--kmeans-epochs", type=int, default=10, help="Passes of the dataset-level k-means (default: 10).")
    parser.add_argument("--device", default="cpu", help="torch device for the k-means (default: cpu).")
    parser.add_argument("--json", metavar="FILE", help="Also write the scores as JSON (mIoU and accuracy in percent).")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `emerdiff --help` does not load torch and friends.
    from jobs.tools.evaluation import EvaluationConfig, evaluate

    try:
        config = EvaluationConfig(
            output=args.output, ground_truth=args.gt, num_classes=args.classes, ignore_index=args.ignore_index,
            protocols=tuple(args.protocols or PROTOCOLS), seed=args.seed, kmeans_epochs=args.kmeans_epochs,
            device=args.device, storage_options=args.storage_options,
        )
        report = evaluate(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    print(report.table())
    if args.json:
        write_json(args.json, report.to_dict(), args.storage_options)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.evaluate"))
