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

from jobs.options import add_config_arguments, add_report_argument, add_storage_arguments, config_values
from jobs.tools.evaluation import EvaluationConfig, evaluate
from jobs.tools.reports import write_json

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, EvaluationConfig)
    add_report_argument(parser, "scores (mIoU and accuracy in percent)")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = EvaluationConfig(**config_values(EvaluationConfig, args), storage_options=args.storage_options)
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
