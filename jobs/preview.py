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

from jobs.options import add_storage_arguments

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="Labelling output folder (local path or fsspec URL).")
    parser.add_argument("--out", default="gallery.html", metavar="FILE", help="HTML file to write (default: gallery.html).")
    parser.add_argument("--n", type=int, default=48, help="Ok rows to show (default: 48).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the row sample (default: 0).")
    parser.add_argument("--max-errors", type=int, default=200, help="Error rows listed with their message (default: 200).")
    parser.add_argument("--thumbnail", type=int, default=256, help="Longest side of each picture in pixels (default: 256).")
    parser.add_argument("--no-images", dest="with_images", action="store_false",
                        help="Do not read the input shards; show the label maps without photos.")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `emerdiff --help` does not load torch and friends.
    from jobs.tools.gallery import PreviewConfig, write_preview

    try:
        config = PreviewConfig(
            output=args.output, destination=args.out, num_samples=args.n, seed=args.seed, max_errors=args.max_errors,
            thumbnail=args.thumbnail, with_images=args.with_images, storage_options=args.storage_options,
        )
        sample = write_preview(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("wrote %s: %d of %d ok rows, %d error rows", args.out, len(sample.picked), sample.ok, sample.failed)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.preview"))
