"""Summarise a labelling output: shards done/failed/pending, rows ok/error with the top error
messages, throughput per shard, model, config and schema version. Reads only the output's own files.

    emerdiff inspect out/ [--json summary.json]
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import add_storage_arguments
from jobs.tools.reports import write_json

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="Labelling output folder (local path or fsspec URL).")
    parser.add_argument("--json", metavar="FILE", help="Also write the summary as JSON.")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `emerdiff --help` does not load torch and friends.
    from jobs.tools.summary import format_summary, summarise

    try:
        summary = summarise(args.output, args.storage_options)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    print(format_summary(summary))
    if args.json:
        write_json(args.json, summary.to_dict(), args.storage_options)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.inspect"))
