"""Label WebDataset shards into one Parquet file per shard, on any fsspec store, with Ray.

  emerdiff label --input 's3://bucket/shards/shard-{000000..000999}.tar' --output s3://bucket/labels/run1

Shards can also be listed in text files, one URL (or pattern) per line: --input-list urls.txt.

Without --address (or RAY_ADDRESS) a local Ray starts; under `ray job submit` the job joins the
cluster. Rerun the same command to resume: shards with a marker in OUTPUT/_markers/ are skipped.
Output: OUTPUT/data/<shard>.parquet (one row per sample), OUTPUT/_manifest.parquet, OUTPUT/_SUCCESS.
One job at a time writes an output: a second one on the same --output is refused (exit 3) naming
the job that holds it, or waits with --lease-wait. Exit status: 0 all shards done, 1 some shard
failed, 2 bad options or inputs, 3 output refused (another model or config, or busy), 4 output
taken over by another job mid-run, 5 the job could not run (Ray, model loading, dying actors),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading

from jobs.options import (
    add_config_arguments, add_method_arguments, add_model_arguments, add_storage_arguments, config_from_args, config_values,
)
from pipeline.config import LabelJobConfig
from pipeline.exit_status import ExitStatus
from schemas.urls import read_list_file

logger = logging.getLogger("jobs.label")


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
    add_config_arguments(parser, LabelJobConfig, title="job")
    add_method_arguments(parser)


def job_from_args(args: argparse.Namespace) -> LabelJobConfig:
    """The job config the flags describe; raises ValueError naming any bad value."""
    return LabelJobConfig(
        inputs=_inputs_from_args(args),
        output=args.output,
        model=args.model,
        method=config_from_args(args),
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        storage_options=args.storage_options,
        **config_values(LabelJobConfig, args),
    )


def _inputs_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """--input entries, then each --input-list's entries in file order; raises ValueError for none."""
    if not args.inputs and not args.input_lists:
        raise ValueError("no input shards: pass --input URL [URL ...], --input-list URL, or both")
    listed = [entry for url in args.input_lists for entry in read_list_file(
        url, args.storage_options, what="URL list", flag="--input-list", entries="URLs",
        folder_hint=" (to label every shard in a folder, use --input 'FOLDER/*.tar')")]
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
    # Imported here so that --help stays light; none of these imports torch (the driver never does).
    from pipeline.distributors import JobError
    from pipeline.driver import JobRefused, plan_job, run_job
    from pipeline.lease import LeaseHeld, LeaseLost

    _quiet_store_clients()
    try:
        job = job_from_args(args)
        if job.dry_run:
            print(plan_job(job).format())
            return ExitStatus.OK
        with _sigterm_as_interrupt():
            summary = run_job(job)
    except (ValueError, FileNotFoundError) as error:
        return _failed(error, ExitStatus.USAGE)
    except (JobRefused, LeaseHeld) as error:
        return _failed(error, ExitStatus.REFUSED)
    except LeaseLost as error:  # another job took the output over: this one's work stops uncommitted
        return _failed(error, ExitStatus.TAKEN_OVER)
    except JobError as error:
        return _failed(error, ExitStatus.FAILED)
    except KeyboardInterrupt:  # before any shard started; run_job handles it afterwards
        return ExitStatus.INTERRUPTED
    print(summary.format())
    sys.stdout.flush()
    return summary.exit_code


def _failed(error: Exception, status: ExitStatus) -> ExitStatus:
    logger.error("%s", error)
    return status


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.label"))
