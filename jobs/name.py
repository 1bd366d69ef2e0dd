"""Name every segment of a labelling output with a class from a list, the way the EmerDiff paper
names its masks (Table 3): each segment's stored CLIP embedding against the class names' text
embeddings. The output must have been labelled with `emerdiff label --clip-model SRC`.

Needs only CLIP's text tower: no image, no Stable Diffusion, so run it again with any list at any
time. Writes a class table folder that `export --clusters`, `evaluate --clusters` and
`preview --clusters` read:

  segment_classes.parquet  shard, row, key, segment_id, class, score for every segment of every ok row
  classes.json             class names in id order, templates, CLIP model and weights hash,
                           segments per class, unknowns (class 255, below --min-score)

    emerdiff name out/ --classes "cat,sofa,wall,floor" --out out-names/
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.naming import NameConfig, name_segments

logger = logging.getLogger(__name__)


def _report(config: NameConfig, summary: dict) -> None:
    counts = sorted(zip(summary["segments_per_class"], summary["class_names"]), reverse=True)
    common = ", ".join(f"{name} {count}" for count, name in counts[:10])
    logger.info("named %d segments into %d classes (%s), %d unknown; wrote %s", summary["num_segments"],
                summary["num_classes"], common, summary["num_unknown"], config.destination)


COMMAND = Command(NameConfig, name_segments, _report)
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.name"))
