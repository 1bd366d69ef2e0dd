"""Cluster every segment embedding of a labelling output into dataset-wide classes.

EmerDiff's segment ids are per image. This runs mini-batch k-means (torch, streaming over the data
files, so the output need not fit in memory) and writes a class table folder:

  segment_classes.parquet  key, segment_id, class for every segment of every ok row
  centroids.npy            the class centres; clusters.json: what produced them
  ann_dir/<key>.png        with --png: label maps relabelled to classes

Deterministic for a --seed. `emerdiff export --clusters DIR` exports with these classes.

    emerdiff cluster out/ --classes 27 --out out-classes/ --png
"""

from __future__ import annotations

import argparse
import logging

from jobs.options import BOOLEAN_FLAG, add_config_arguments, add_storage_arguments, config_values
from jobs.tools.clustering import ClusterJob, cluster_output
from jobs.tools.export_png import export_png
from jobs.tools.kmeans import KMeansConfig

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, ClusterJob)
    add_config_arguments(parser, KMeansConfig)
    parser.add_argument("--png", default=False, **BOOLEAN_FLAG, help="Also write relabelled label maps, DIR/ann_dir/<key>.png.")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        kmeans = KMeansConfig(**config_values(KMeansConfig, args))
        job = ClusterJob(**config_values(ClusterJob, args), kmeans=kmeans, storage_options=args.storage_options)
        summary = cluster_output(job)
        if args.png:
            export_png(job.output, job.destination, job.storage_options, class_table=job.destination)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("%d segments in %d classes written to %s", summary["num_segments"], kmeans.num_clusters, job.destination)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.cluster"))
