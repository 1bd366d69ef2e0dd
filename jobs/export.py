"""Export a labelling output for training code.

  png   ann_dir/<key>.png label maps, the folder layout mmsegmentation and detectron2 read
  coco  annotations.json, one annotation with an RLE mask per segment (pycocotools format)
  hf    a Hugging Face dataset: data/*.parquet (labels as Image) and a README.md dataset card

Values are per-image segment ids; with --clusters (a folder from `emerdiff cluster`) they become
dataset-wide classes (png, coco) or an extra class_labels column (hf).

    emerdiff export out/ --format png --out export/
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.export import ExportConfig, export

logger = logging.getLogger(__name__)


def _report(config: ExportConfig, count: int) -> None:
    logger.info("exported %d %s to %s", count, "annotations" if config.file_format == "coco" else "rows", config.destination)


COMMAND = Command(ExportConfig, export, _report)
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.export"))
