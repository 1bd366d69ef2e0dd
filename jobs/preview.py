"""Write a self-contained HTML gallery of a labelling output.

Samples --n ok rows uniformly over every done shard (the same --seed gives the same sample) and shows
each as photo, colour overlay, low-resolution map, segment count and scores; error rows are listed
with their messages. The photos are read from the input shards each row names (--no-images skips
that). The page has no script and no external link: it opens offline.

    emerdiff preview out/ --n 48 --out gallery.html
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import add_config_arguments, add_storage_arguments, config_values
from jobs.tools.gallery import PreviewConfig, write_preview

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PreviewConfig)
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = PreviewConfig(**config_values(PreviewConfig, args), storage_options=args.storage_options)
        sample = write_preview(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("wrote %s: %d of %d ok rows, %d error rows", config.destination, len(sample.picked), sample.ok, sample.failed)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.preview"))
