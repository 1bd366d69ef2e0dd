"""Summarise a labelling output: shards done/failed/pending, rows ok/error with the top error
messages, throughput per shard, model, config and schema version. Reads only the output's own files.

    emerdiff inspect out/ [--json summary.json]
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import add_config_arguments, add_report_argument, add_storage_arguments, config_values
from jobs.tools.reports import write_json
from jobs.tools.summary import InspectConfig, format_summary, summarise

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, InspectConfig)
    add_report_argument(parser, "summary")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = InspectConfig(**config_values(InspectConfig, args))
        summary = summarise(config.output, args.storage_options)
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
