"""Write a self-contained HTML gallery of a labelling output.

Samples --n ok rows uniformly over every done shard (the same --seed gives the same sample) and shows
each as photo, colour overlay, low-resolution map, segment count and scores; error rows are listed
with their messages. The photos are read from the input shards each row names (--no-images skips
that). The page has no script and no external link: it opens offline.

    emerdiff preview out/ --n 48 --out gallery.html
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.gallery import PreviewConfig, RowSample, write_preview

logger = logging.getLogger(__name__)


def _report(config: PreviewConfig, sample: RowSample) -> None:
    logger.info("wrote %s: %d of %d ok rows, %d error rows", config.destination, len(sample.picked), sample.ok, sample.failed)


COMMAND = Command(PreviewConfig, write_preview, _report)
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.preview"))
