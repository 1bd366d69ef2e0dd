"""The ``emerdiff`` command line: one subcommand per module in ``jobs/``.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int`` and can also be
started on its own (``python -m jobs.label ...``, e.g. under ``ray job submit``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from pipeline.exit_status import ExitStatus

# name -> (module, one-line help); a module is imported only when its subcommand runs.
SUBCOMMANDS = {
    "label": ("jobs.label", "Label WebDataset shards into Parquet on any fsspec store (the main job)."),
    "segment": ("jobs.segment", "Segment a few image files and write label, overlay and JSON per image."),
    "make-shards": ("jobs.make_shards", "Pack images (and optional ground truth) into WebDataset shards."),
    "preview": ("jobs.preview", "Write a self-contained HTML gallery of labelled rows."),
    "evaluate": ("jobs.evaluate", "mIoU and pixel accuracy of labels against ground truth."),
    "export": ("jobs.export", "Export images and labels as PNG folders, COCO, a Hugging Face dataset or WebDataset shards."),
    "cluster": ("jobs.cluster", "Cluster segment embeddings into dataset-wide classes."),
    "name": ("jobs.name", "Name every segment with a class from a list (CLIP text embeddings)."),
    "inspect": ("jobs.inspect", "Summarise a labelling output: shards, rows, errors, model, config."),
}


# The modules of pyproject.toml's optional extras that commands import. A command that finds one
# missing ends with the line that installs its extra, not a traceback (tests/install/test_extras.py
# keeps this table in step with the imports and the extras).
EXTRA_MODULES = {
    **dict.fromkeys(("ray", "webdataset", "braceexpand", "pyarrow"), "pipeline"),
    **dict.fromkeys(("scipy", "pycocotools"), "tools"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the flags of the subcommand named in ``argv`` only.

    A subcommand's flags come from its config dataclasses, whose modules import torch and friends;
    importing only the chosen one keeps `emerdiff --help` and every other command fast.
    """
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    parser = argparse.ArgumentParser(prog="emerdiff", description="EmerDiff pseudo-labelling at scale.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == chosen:
            module = importlib.import_module(module_name)
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    def start() -> int:
        args = build_parser(argv).parse_args(argv)
        configure_logging(args.log_level)
        return args.run(args)

    return with_extras_named(start)


def run_module(module_name: str, argv: Sequence[str] | None = None) -> int:
    """Entry for ``python -m jobs.<name>``: that subcommand alone, same flags."""
    def start() -> int:
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        module.add_arguments(parser)
        args = parser.parse_args(argv)
        configure_logging(args.log_level)
        return module.run(args)

    return with_extras_named(start)


def with_extras_named(start: Callable[[], int]) -> int:
    """``start()``, or exit status 2 naming the extra to install when a module of one is missing."""
    try:
        return start()
    except ModuleNotFoundError as error:
        module = (error.name or "").partition(".")[0]
        extra = EXTRA_MODULES.get(module)
        if extra is None:
            raise
        print(f"emerdiff: error: this command needs {module}, which the '{extra}' extra installs. From the "
              f"repository root: pip install -e '.[{extra}]' (or '.[all]': everything the README uses).", file=sys.stderr)
        return ExitStatus.FAILED


def exit_cleanly(code: int) -> None:
    """Flush and leave without running interpreter teardown.

    Processes that read Parquet through fsspec with pyarrow 26 can abort during teardown
    ("terminate called without an active exception", exit 134), which a caller would see as a
    failed job; everything worth keeping is flushed here first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def entrypoint() -> None:
    """The installed ``emerdiff`` console script."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    exit_cleanly(code)
