"""Summarise a labelling output: shards done/failed/pending, rows ok/error with the top error
messages, throughput per shard, model, config and schema version. Reads only the output's own files.

    emerdiff inspect out/ [--json summary.json]
"""

from __future__ import annotations

from jobs.command import Command
from jobs.tools.summary import InspectConfig, OutputSummary, format_summary, summarise


def _report(config: InspectConfig, summary: OutputSummary) -> None:
    print(format_summary(summary))


COMMAND = Command(InspectConfig, summarise, _report, json="summary")
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.inspect"))
