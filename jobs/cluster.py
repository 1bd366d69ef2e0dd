"""Cluster every segment embedding of a labelling output into dataset-wide classes.

EmerDiff's segment ids are per image. This runs mini-batch k-means (torch, streaming over the data
files, so the output need not fit in memory) and writes a class table folder:

  segment_classes.parquet  shard, row, key, segment_id, class for every segment of every ok row
  classes.json             what produced it: source output, k-means options, class sizes
  centroids.npy            the class centres
  ann_dir/<name>.png       with --png: label maps relabelled to classes (export png's names)

Deterministic for a --seed. `emerdiff export --clusters DIR` exports with these classes.

    emerdiff cluster out/ --classes 27 --out out-classes/ --png
"""

from __future__ import annotations

import logging

from jobs.command import Command
from jobs.tools.clustering import ClusterJob, cluster_output
from jobs.tools.export import ExportConfig, export

logger = logging.getLogger(__name__)


def _cluster(job: ClusterJob) -> dict:
    summary = cluster_output(job)
    if job.png:
        export(ExportConfig(output=job.output, file_format="png", destination=job.destination, clusters=job.destination,
                            with_images=False, storage_options=job.storage_options))
    return summary


def _report(job: ClusterJob, summary: dict) -> None:
    logger.info("%d segments in %d classes written to %s", summary["num_segments"], job.kmeans.num_clusters, job.destination)


COMMAND = Command(ClusterJob, _cluster, _report)
add_arguments, run = COMMAND.add_arguments, COMMAND.run

if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.cluster"))
