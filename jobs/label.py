"""Label WebDataset shards into one Parquet file per shard, on any fsspec store, with Ray.

  emerdiff label --input 's3://bucket/shards/shard-{000000..000999}.tar' \\
                 --output s3://bucket/labels/run1 --model stable-diffusion-v1-5/stable-diffusion-v1-5

Shards can also be listed in text files, one URL (or pattern) per line: --input-list urls.txt.

Without --address (or RAY_ADDRESS) a local Ray starts; under `ray job submit` the job joins the
cluster. Rerun the same command to resume: shards with a marker in OUTPUT/_markers/ are skipped.
Output: OUTPUT/data/<shard>.parquet (one row per sample), OUTPUT/_manifest.parquet, OUTPUT/_SUCCESS.
One job at a time writes an output: a second one on the same --output is refused (exit 2) naming
the job that holds it, or waits with --lease-wait. Exit status: 0 all shards done, 1 some shard
failed (or the output was taken over), 2 refused (bad options, incompatible or busy output),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import types
import typing

from jobs.options import add_config_arguments, add_model_arguments, add_storage_arguments, config_from_args
from pipeline.config import FailureInjection, LabelJobConfig

logger = logging.getLogger("jobs.label")

FAILURE_INJECTION_ENV = "EMERDIFF_FAILURE_INJECTION"  # JSON of pipeline.config.FailureInjection; tests only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", dest="inputs", nargs="+", action="extend", default=[], metavar="URL",
                        help="Input shards: URLs, brace patterns ('shard-{000000..000099}.tar') or globs, "
                             "on local disk or any fsspec store (s3://, gs://, az://, ...).")
    parser.add_argument("--input-list", dest="input_lists", action="append", default=[], metavar="URL",
                        help="Text file (local or fsspec URL) with one --input entry per line, added after "
                             "--input; blank lines and '#' comments (a whole line, or after a space) are "
                             "skipped. Repeatable. At least one of --input and --input-list is required.")
    parser.add_argument("--output", required=True, metavar="URL",
                        help="Output folder (local path or fsspec URL); see the layout above.")
    add_model_arguments(parser)
    add_storage_arguments(parser)
    _add_job_arguments(parser.add_argument_group("job"))
    add_config_arguments(parser)


def _job_option_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(LabelJobConfig) if "help" in f.metadata]


def _add_job_arguments(group) -> None:
    hints = typing.get_type_hints(LabelJobConfig)
    for field in _job_option_fields():
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata["help"]
        if field.default is not None and field.default is not False:
            help_text += f" (default: {_show(field.default)})"
        base = _base_type(hints[field.name])
        settings = dict(field.metadata["flag"])
        if base is bool:
            group.add_argument(flag, dest=field.name, action="store_true", help=help_text)
            continue
        if base in (int, float):
            settings.setdefault("metavar", "N")
        parse = {int: int, float: float, tuple: _comma_list}.get(base, str)
        group.add_argument(flag, dest=field.name, type=parse, default=field.default, help=help_text, **settings)


def _base_type(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is typing.Literal:
        return str
    return typing.get_origin(hint) or hint


def _show(default) -> str:
    return ",".join(default) if isinstance(default, tuple) else str(default)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip().lstrip(".") for part in text.split(",") if part.strip())


def job_from_args(args: argparse.Namespace) -> LabelJobConfig:
    """The job config the flags describe; raises ValueError naming any bad value."""
    injection = os.environ.get(FAILURE_INJECTION_ENV)
    return LabelJobConfig(
        inputs=_inputs_from_args(args),
        output=args.output,
        model=args.model,
        method=config_from_args(args),
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        storage_options=args.storage_options,
        failure_injection=FailureInjection(**json.loads(injection)) if injection else None,
        **{field.name: getattr(args, field.name) for field in _job_option_fields()},
    )


def _inputs_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """--input entries, then each --input-list's entries in file order; raises ValueError for none."""
    from pipeline.sources import read_url_list  # imports webdataset: not needed for --help

    if not args.inputs and not args.input_lists:
        raise ValueError("no input shards: pass --input URL [URL ...], --input-list URL, or both")
    listed = [entry for url in args.input_lists for entry in read_url_list(url, args.storage_options)]
    return (*args.inputs, *listed)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    # `ray job stop`, Kubernetes and schedulers send SIGTERM: stop as cleanly as on Ctrl-C.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_store_clients() -> None:
    # botocore and friends announce every credential and endpoint lookup at INFO.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from emerdiff import ModelLoadError
    from pipeline.distributors import JobError
    from pipeline.job import JobRefused, plan_job, run_job
    from pipeline.lease import LeaseHeld, LeaseLost

    _quiet_store_clients()
    try:
        job = job_from_args(args)
        if job.dry_run:
            print(plan_job(job).format())
            return 0
        with _sigterm_as_interrupt():
            summary = run_job(job)
    except (JobRefused, LeaseHeld, ValueError, FileNotFoundError, ModelLoadError, JobError) as error:
        logger.error("%s", error)
        return 2
    except LeaseLost as error:  # another job took the output over: this one's work stops uncommitted
        logger.error("%s", error)
        return 1
    except KeyboardInterrupt:  # before any shard started; run_job handles it afterwards
        return 130
    print(summary.format())
    sys.stdout.flush()
    return summary.exit_code


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.label"))
