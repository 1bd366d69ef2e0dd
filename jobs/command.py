"""One subcommand of the tools: flags from one config dataclass, one call, its result reported.

Every tool module in ``jobs/`` declares a ``Command`` and exposes its ``add_arguments`` and ``run``
(the protocol ``jobs.cli`` expects); this class owns what they would otherwise each repeat: the
flags, ``--storage-options`` when the config has storage options, ``--json FILE`` when the result
has a JSON form, turning the config's own ValueErrors (and inputs not found) into exit status 2,
and the exit statuses of ``pipeline.exit_status.ExitStatus``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from jobs.options import add_config_arguments, add_report_argument, add_storage_arguments, build_config
from jobs.tools.reports import write_json
from pipeline.exit_status import ExitStatus

logger = logging.getLogger("jobs")


@dataclasses.dataclass(frozen=True)
class Command:
    config: type  # a frozen dataclass whose flag fields (pipeline.config.option) are the command's flags
    action: Callable[[Any], Any]  # config -> result; raises ValueError for input it cannot use
    # Tells the person what happened (print or log); a returned ExitStatus overrides OK.
    report: Callable[[Any, Any], ExitStatus | None] = lambda config, result: None
    json: str | None = None  # with --json FILE, result.to_dict() is written there; this says what it holds

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_config_arguments(parser, self.config)
        if self.json:
            add_report_argument(parser, self.json)
        if self._has_storage_options:
            add_storage_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        storage = {"storage_options": args.storage_options} if self._has_storage_options else {}
        try:
            config = build_config(self.config, args, **storage)
            result = self.action(config)
        except (ValueError, FileNotFoundError) as error:  # the config's own checks, an input that is not there
            logger.error("%s", error)
            return ExitStatus.USAGE
        status = self.report(config, result) or ExitStatus.OK
        if self.json and args.json:
            write_json(args.json, result.to_dict(), storage.get("storage_options", {}))
        return status

    @property
    def _has_storage_options(self) -> bool:
        return any(field.name == "storage_options" for field in dataclasses.fields(self.config))
