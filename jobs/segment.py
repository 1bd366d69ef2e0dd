"""Segment a few image files and write, per image, the label map, a colour overlay and a JSON.

  emerdiff segment photo.jpg more/*.png --out results/ [--model SRC] [--num-masks 30 ...]

For each IMAGE this writes OUT/<stem>.labels.png (single-channel segment ids at the image's
size), OUT/<stem>.overlay.png and OUT/<stem>.json (segments, model and config). This is how to
try the method on your own pictures before labelling a dataset with `emerdiff label`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from jobs.options import add_config_arguments, add_model_arguments, config_from_args
from jobs.visualize import overlay

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="Image files (any format Pillow reads).")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder for the results (created if missing).")
    add_model_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from emerdiff import EmerDiffSegmenter, ModelLoadError

    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        return _usage_error(str(error))
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:
        return _usage_error(f"no such image file(s): {', '.join(missing)}")
    try:
        segmenter = EmerDiffSegmenter.from_pretrained(
            args.model, config=config, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle
        )
    except (ModelLoadError, ValueError) as error:
        return _usage_error(str(error))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            write_result(segmenter, Path(path), out)
        except (ValueError, OSError, UnidentifiedImageError) as error:
            failures += 1
            logger.error("%s: %s", path, error)
    logger.info("wrote results for %d of %d image(s) to %s", len(args.images) - failures, len(args.images), out)
    return 1 if failures else 0


def write_result(segmenter, path: Path, out: Path) -> None:
    from emerdiff.images import to_rgb

    with Image.open(path) as opened:
        picture = to_rgb(opened)
    result = segmenter.segment(picture)
    stem = out / path.stem
    Image.fromarray(result.labels.astype("uint8" if result.num_masks <= 256 else "uint16")).save(f"{stem}.labels.png")
    overlay(picture, result.labels).save(f"{stem}.overlay.png")
    summary = {
        "image": str(path),
        "width": picture.width,
        "height": picture.height,
        "num_segments": result.num_segments,
        "lowres_labels": result.lowres_labels.tolist(),
        "segments": [
            {"id": s.id, "area": s.area, "bbox": list(s.bbox), "score": round(s.score, 6)} for s in result.segments
        ],
        "model": segmenter.model_info["model"],
        "config": segmenter.config.to_dict(),
        "config_hash": segmenter.config.config_hash,
    }
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2))
    logger.info("%s: %d segments -> %s.{labels,overlay}.png, %s.json", path, result.num_segments, stem, stem)


def _usage_error(message: str) -> int:
    print(f"emerdiff segment: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.segment"))
