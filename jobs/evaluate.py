"""mIoU and pixel accuracy of a labelling output against ground truth, per protocol.

Ground truth is <key>.seg.png in WebDataset shards (class ids, --ignore-index for unlabelled), as
`emerdiff make-shards --gt` writes them, matched to the output's rows by key. Protocols:

  per-image-hungarian  each image's segments matched to the classes on their own (DiffSeg, DiffCut)
  dataset-hungarian    segment embeddings of the whole set clustered into C classes, then one
                       matching for the dataset (STEGO; EmerDiff reports 26.6 mIoU on COCO-Stuff-27)

    emerdiff evaluate out/ --gt shards/ --classes 27 --json scores.json
"""

from __future__ import annotations

from jobs.command import Command
from jobs.tools.evaluation import EvaluationConfig, EvaluationReport, evaluate


def _report(config: EvaluationConfig, report: EvaluationReport) -> None:
    print(report.table())


COMMAND = Command(EvaluationConfig, evaluate, _report, json="scores (mIoU and accuracy in percent)")
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.evaluate"))
