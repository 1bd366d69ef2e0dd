"""Pack images (and optional ground truth) into WebDataset shards for `emerdiff label`.

SRC is a folder (searched recursively), a glob ('photos/**/*.jpg') or a text file listing one image
per line. Keys are the image's path below SRC without its extension, with anything but letters,
digits, '_' and '-' replaced by '_'. The same input always gives byte-identical shards.

With --gt, each image is paired with the PNG of the same relative path and stem in that folder,
stored as <key>.seg.png (class ids, 255 = ignore), so an evaluation set travels as one dataset:

    emerdiff make-shards val2017/ --gt stuffthingmaps/val2017/ --gt-mapping cocostuff27 --output shards/
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import add_config_arguments, add_storage_arguments, config_values
from jobs.tools.image_shards import ShardsConfig, make_shards

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ShardsConfig)
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = ShardsConfig(**config_values(ShardsConfig, args), storage_options=args.storage_options)
        summary = make_shards(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    if summary.unchanged:
        logger.info("%s already holds these %d shard(s), byte for byte: nothing to write", config.output, len(summary.shards))
        return 0
    logger.info(
        "wrote %d samples (%d with ground truth) in %d shard(s) to %s",
        summary.samples, summary.with_ground_truth, len(summary.shards), config.output,
    )
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.make_shards"))
