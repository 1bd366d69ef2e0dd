"""Segment a few image files and write, per image, the label map, a colour overlay and a JSON.

  emerdiff segment photo.jpg more/*.png --out results/ [--model SRC] [--num-masks 30 ...]
  emerdiff segment photo.jpg --out results/ --clip-model openai/clip-vit-base-patch16 --classes "cat,sofa,wall"

For each IMAGE this writes OUT/<stem>.labels.png (single-channel segment ids at the image's
size), OUT/<stem>.overlay.png and OUT/<stem>.json (segments, model and config). With --clip-model
and --classes each segment is named too: the overlay is coloured by class with a legend,
OUT/<stem>.classes.png holds class ids (255 = unknown) and the JSON each segment's class name.
This is how to try the method on your own pictures before labelling a dataset with `emerdiff label`.
"""

from __future__ import annotations

import argparse
import sys

from jobs.options import (
    add_config_arguments, add_method_arguments, add_model_arguments, add_storage_arguments, config_from_args, config_values,
)
from jobs.tools.segment_files import SegmentFilesConfig, load_namer, segment_files
from pipeline.exit_status import ExitStatus


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, SegmentFilesConfig)
    add_model_arguments(parser)
    add_storage_arguments(parser)
    add_method_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from emerdiff import EmerDiffSegmenter, ModelLoadError
    from pipeline.models import local_model_source

    try:
        method = config_from_args(args)
        files = SegmentFilesConfig(**config_values(SegmentFilesConfig, args))
        # A model URL is copied once into $EMERDIFF_MODEL_CACHE, as `emerdiff label` does on each node.
        source = local_model_source(args.model, args.storage_options)
        segmenter = EmerDiffSegmenter.from_pretrained(
            source, config=method, device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle
        )
        namer = load_namer(files, args.device, args.storage_options)
    except (ValueError, OSError) as error:
        print(f"emerdiff segment: error: {error}", file=sys.stderr)
        return ExitStatus.USAGE
    except ModelLoadError as error:
        print(f"emerdiff segment: error: {error}", file=sys.stderr)
        return ExitStatus.FAILED
    return ExitStatus.PARTIAL if segment_files(segmenter, files, namer) else ExitStatus.OK


if __name__ == "__main__":
    from jobs.cli import exit_cleanly, run_module

    exit_cleanly(run_module("jobs.segment"))
