"""Pack images (and optional ground truth) into WebDataset shards for `emerdiff label`.

SRC is a folder (searched recursively), a glob ('photos/**/*.jpg') or a text file listing one image
per line. Keys are the image's path below SRC without its extension, with anything but letters,
digits, '_' and '-' replaced by '_'. The same input always gives byte-identical shards.

With --gt, each image is paired with the PNG of the same relative path and stem in that folder,
stored as <key>.seg.png (class ids, 255 = ignore), so an evaluation set travels as one dataset:

    emerdiff make-shards val2017/ --gt stuffthingmaps/val2017/ --gt-mapping cocostuff27 --output shards/
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.image_shards import ShardsConfig, ShardsSummary, make_shards

logger = logging.getLogger(__name__)


def _report(config: ShardsConfig, summary: ShardsSummary) -> None:
    if summary.unchanged:
        logger.info("%s already holds these %d shard(s), byte for byte: nothing to write", config.output, len(summary.shards))
        return
    logger.info(
        "wrote %d samples (%d with ground truth) in %d shard(s) to %s",
        summary.samples, summary.with_ground_truth, len(summary.shards), config.output,
    )


COMMAND = Command(ShardsConfig, make_shards, _report)
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.make_shards"))
