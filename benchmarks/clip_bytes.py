"""Bytes an output's rows take, with and without the CLIP embeddings of `label --clip-model`.

    OMP_NUM_THREADS=1 python -m benchmarks.clip_bytes --images 8 --num-masks 25 --clip-shape vitb16

Labels the same photos twice with a random model of SD's layout (the tiny one by default: bytes
do not depend on its size, only on K, the embedding widths and the image size), once without CLIP
and once with a random CLIP of ``--clip-shape`` (vitb16: D = 512), and reports the data files'
bytes per row and per segment, and what the CLIP embeddings add. Random embeddings compress about
as badly as real ones (float16 values with no structure Parquet's encodings could use).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.models import CLIP_SHAPES, SHAPES, random_clip
from benchmarks.pipeline_bench import input_shards, model_folder
from benchmarks.report import benchmark_main
from emerdiff.tiny import _save_tokenizer
from pipeline.config import LabelJobConfig
from pipeline.driver import run_job
from schemas.reading import iter_rows, read_markers


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--clip-shape", default="vitb16", choices=sorted(CLIP_SHAPES))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--num-masks", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=256, help="At least 64 x sqrt(K) on the tiny model (its 16x16 grid is latent/4).")
    parser.add_argument("--clip-resolution", type=int, default=448)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here.")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="emerdiff-bytes-"))
    model = model_folder(args.shape, root / "model")
    clip_folder = save_random_clip(args.clip_shape, root / "clip")
    shards, _ = input_shards(args.images, args.images, root)
    report = {"shape": args.shape, "clip_shape": args.clip_shape, "images": args.images, "num_masks": args.num_masks,
              "resolution": args.resolution}
    for name, clip in (("without_clip", None), ("with_clip", str(clip_folder))):
        output = root / name
        job = LabelJobConfig(inputs=tuple(shards), output=str(output), model=model, executor="local",
                             clip_model=clip, clip_resolution=args.clip_resolution)
        job = job.replace(method=job.method.replace(num_masks=args.num_masks, resolution=args.resolution,
                                                    feature_samples=2, kmeans_restarts=2, modulation_timestep=61))
        summary = run_job(job)
        if summary.failed or summary.stats.errors:
            raise RuntimeError(f"labelling failed: {summary.format()}")
        rows = list(iter_rows(str(output), columns=["num_segments"]))
        data_bytes = sum(marker.data_bytes for marker in read_markers(str(output)))
        segments = sum(row["num_segments"] or 0 for row in rows)
        report[name] = {"rows": len(rows), "segments": segments, "data_bytes": data_bytes,
                        "bytes_per_row": data_bytes / len(rows), "segments_per_row": segments / len(rows)}
    added = report["with_clip"]["data_bytes"] - report["without_clip"]["data_bytes"]
    report["clip_bytes_per_row"] = added / report["with_clip"]["rows"]
    report["clip_bytes_per_segment"] = added / report["with_clip"]["segments"]
    report["clip_dim"] = CLIP_SHAPES[args.clip_shape]["projection_dim"]
    return report


def save_random_clip(shape: str, folder: Path) -> Path:
    """A random CLIP of ``shape`` saved as a transformers folder (with CLIP's byte-level tokenizer)."""
    random_clip(shape).model.save_pretrained(folder)
    _save_tokenizer(folder)
    return folder


def print_table(report: dict) -> None:
    print(f"\nOutput bytes: {report['images']} photos, {report['shape']} model at {report['resolution']} px, "
          f"K={report['num_masks']}, CLIP {report['clip_shape']} (D={report['clip_dim']})")
    for name in ("without_clip", "with_clip"):
        r = report[name]
        print(f"  {name:<13} {r['bytes_per_row']:>10.0f} bytes/row  ({r['segments_per_row']:.1f} segments/row)")
    print(f"  CLIP embeddings add {report['clip_bytes_per_row']:.0f} bytes/row, "
          f"{report['clip_bytes_per_segment']:.0f} bytes/segment (2 x D = {2 * report['clip_dim']} uncompressed)")


def main(argv=None) -> int:
    return benchmark_main(argv, parse_args, run, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
