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

from jobs.options import add_storage_arguments
from jobs.tools.cocostuff import GT_MAPPINGS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="Folder, glob or list file of images (local path or fsspec URL).")
    parser.add_argument("--output", required=True, metavar="DIR", help="Folder the shards are written to.")
    parser.add_argument("--maxcount", type=int, default=1000, help="Samples per shard (default: 1000).")
    parser.add_argument("--gt", metavar="DIR", help="Folder of ground-truth label PNGs named like the images.")
    parser.add_argument("--gt-mapping", choices=sorted(GT_MAPPINGS),
                        help="Map the ground truth's fine ids to coarse classes, e.g. COCO-Stuff's 182 labels to its 27 classes.")
    parser.add_argument("--prefix", default="shard", help="Shard names are PREFIX-000000.tar, ... (default: shard).")
    parser.add_argument("--overwrite", action="store_true", help="Replace shards with the same prefix already in --output.")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `emerdiff --help` does not load torch and friends.
    from jobs.tools.image_shards import ShardsConfig, make_shards

    try:
        config = ShardsConfig(
            source=args.source, output=args.output, maxcount=args.maxcount, ground_truth=args.gt,
            gt_mapping=args.gt_mapping, prefix=args.prefix, overwrite=args.overwrite,
            storage_options=args.storage_options,
        )
        summary = make_shards(config)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info(
        "wrote %d samples (%d with ground truth) in %d shard(s) to %s",
        summary.samples, summary.with_ground_truth, len(summary.shards), args.output,
    )
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.make_shards"))
