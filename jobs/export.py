"""Export a labelling output for training code: images and labels together.

  png         img_dir/<name>.<ext> + ann_dir/<name>.png, mmsegmentation's layout
  coco        images/<name>.<ext> + annotations.json, one RLE mask per segment (pycocotools)
  hf          a Hugging Face dataset: data/*.parquet (image and labels as Image) and a dataset card
  webdataset  shard-000000.tar, ...: <name>.<ext>, <name>.seg.png, <name>.json per sample

<name> is <shard>/<key> (<shard>/<key>~<n> for a key's n-th repeat in its shard). Images are read,
byte for byte, from the input shard each row was labelled from (--no-images: labels only). Values
are per-image segment ids; with --clusters (a class table from `emerdiff cluster` or `emerdiff
name`) they are dataset-wide classes, 255 where a segment has none. Error rows and rows without a
usable file name are counted in DIR/export.json, written last.

    emerdiff export out/ --format webdataset --out export-wds/ --clusters out-classes/
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.export import ExportConfig, ExportSummary, export

logger = logging.getLogger(__name__)


def _report(config: ExportConfig, summary: ExportSummary) -> None:
    logger.info("exported %d rows to %s (%d error rows and %d rows without a usable name left out; see %s/export.json)",
                summary.rows, config.destination, summary.error_rows, summary.skipped_rows, config.destination.rstrip("/"))


COMMAND = Command(ExportConfig, export, _report, json="export summary")
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.export"))
