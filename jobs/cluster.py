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

from jobs.options import add_storage_arguments

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="Labelling output folder (local path or fsspec URL).")
    parser.add_argument("--classes", type=int, required=True, metavar="C", help="Number of dataset-wide classes.")
    parser.add_argument("--out", metavar="DIR", help="Class table folder (default: OUTPUT-classes<C>, beside the output).")
    parser.add_argument("--png", action="store_true", help="Also write relabelled label maps, DIR/ann_dir/<key>.png.")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0).")
    parser.add_argument("--epochs", type=int, default=10, help="Passes over all embeddings (default: 10).")
    parser.add_argument("--batch-size", type=int, default=4096, help="Embeddings per k-means update (default: 4096).")
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="Cluster raw embeddings instead of unit-length ones (cosine).")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu).")
    add_storage_arguments(parser)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `emerdiff --help` does not load torch and friends.
    from jobs.tools.clustering import ClusterJob, cluster_output
    from jobs.tools.export_png import export_png
    from jobs.tools.kmeans import KMeansConfig

    destination = args.out or f"{args.output.rstrip('/')}-classes{args.classes}"
    try:
        kmeans = KMeansConfig(num_clusters=args.classes, seed=args.seed, batch_size=args.batch_size, epochs=args.epochs,
                              normalize=args.normalize, device=args.device)
        summary = cluster_output(ClusterJob(args.output, destination, kmeans, args.storage_options))
        if args.png:
            export_png(args.output, destination, args.storage_options, class_table=destination)
    except ValueError as error:
        logger.error("%s", error)
        return 2
    logger.info("%d segments in %d classes written to %s", summary["num_segments"], args.classes, destination)
    return 0


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.cluster"))
