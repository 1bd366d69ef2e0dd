"""What every benchmark's command line does with its report: print the table, write the JSON."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable


def run_and_report(run: Callable[[argparse.Namespace], dict], print_table: Callable[[dict], None],
                   args: argparse.Namespace) -> dict:
    """Run the benchmark, print its table and, with ``--json PATH``, write the report there."""
    report = run(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


def benchmark_main(argv, parse_args: Callable, run: Callable[[argparse.Namespace], dict],
                   print_table: Callable[[dict], None]) -> int:
    """A benchmark's ``main``: quiet logging, then ``run_and_report``; exit status 0."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_and_report(run, print_table, parse_args(argv))
    return 0
