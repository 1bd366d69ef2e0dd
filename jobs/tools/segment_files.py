"""``emerdiff segment``: a few image files in, per image a label PNG, a colour overlay and a JSON.

For each IMAGE: OUT/<stem>.labels.png (single-channel segment ids at the image's size, 16-bit when
there are more than 256 masks), OUT/<stem>.overlay.png and OUT/<stem>.json (segments, model and
config). With --clip-model and --classes, each segment is also named (emerdiff.naming): the
overlay is coloured by class with a legend of the names, OUT/<stem>.classes.png holds the class
ids (255 = unknown) and the JSON gives each segment's class, name and score. An image that cannot
be read or segmented is logged and counted; the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from emerdiff.images import to_rgb
from emerdiff.naming import UNKNOWN, Vocabulary
from jobs.visualize import legend_colour, overlay, with_legend
from pipeline.config import option

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SegmentFilesConfig:
    images: tuple[str, ...] = option(help="Image files (any format Pillow reads).", name="images", nargs="+", metavar="IMAGE")
    out: str = option(help="Folder for the results (created if missing).", metavar="DIR")
    clip_model: str | None = option(
        None, "Name the segments with this CLIP model (a Hub id such as openai/clip-vit-base-patch16, a local "
              "folder, an fsspec URL of one, or 'tiny'); needs --classes.", metavar="SRC")
    clip_resolution: int = option(448, "Side of the square the image is resized to for CLIP.")
    classes: str | None = option(
        None, "Class names for --clip-model: 'cat,sofa,wall' or a text file with one name per line.", metavar="LIST_OR_FILE")
    templates: str | None = option(None, "Prompt templates file for the class names (see `emerdiff name`).", metavar="FILE")
    min_score: float | None = option(None, "Segments less sure than this probability are named unknown.", metavar="P")

    def __post_init__(self) -> None:
        missing = [path for path in self.images if not Path(path).is_file()]
        if missing:
            raise ValueError(f"no such image file(s): {', '.join(missing)}")
        if (self.clip_model is None) != (self.classes is None):
            raise ValueError("naming segments takes both --clip-model and --classes (the names to choose from)")


@dataclasses.dataclass(frozen=True)
class Namer:
    """The CLIP model and the class names that name each image's segments."""

    clip: object  # emerdiff.clip.SegmentCLIP
    vocabulary: Vocabulary
    min_score: float | None

    def name(self, picture: Image.Image, result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class per mask id, score per mask id, class map at the image's size); ids without pixels get UNKNOWN."""
        embeddings = self.clip.segment_embeddings(picture, result.labels, result.num_masks)
        classes, scores = self.vocabulary.assign(embeddings, self.min_score)
        classes[result.area == 0] = UNKNOWN
        return classes, scores, classes[result.labels]


def load_namer(config: SegmentFilesConfig, device: str | None, storage_options: dict | None = None) -> Namer | None:
    """The namer --clip-model and --classes describe, or None without them; ValueError for a bad list."""
    if config.clip_model is None:
        return None
    from emerdiff.clip import SegmentCLIP
    from jobs.tools.naming import class_names, read_templates
    from pipeline.models import local_model_source

    names = class_names(config.classes, storage_options or {})
    templates = read_templates(config.templates, storage_options or {})
    source = local_model_source(config.clip_model, storage_options)
    clip = SegmentCLIP.from_pretrained(source, resolution=config.clip_resolution, device=device)
    return Namer(clip, Vocabulary.build(clip, names, templates), config.min_score)


def segment_files(segmenter, config: SegmentFilesConfig, namer: Namer | None = None) -> int:
    """Segment (and name) every image and write its files; returns how many images failed."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in config.images:
        try:
            write_result(segmenter, Path(path), out, namer)
        except (ValueError, OSError, UnidentifiedImageError) as error:
            failures += 1
            logger.error("%s: %s", path, error)
    logger.info("wrote results for %d of %d image(s) to %s", len(config.images) - failures, len(config.images), out)
    return failures


def write_result(segmenter, path: Path, out: Path, namer: Namer | None = None) -> None:
    with Image.open(path) as opened:
        picture = to_rgb(opened)
    result = segmenter.segment(picture)
    stem = out / path.stem
    Image.fromarray(result.labels.astype("uint8" if result.num_masks <= 256 else "uint16")).save(f"{stem}.labels.png")
    segments = [{"id": s.id, "area": s.area, "bbox": list(s.bbox), "score": round(s.score, 6)} for s in result.segments]
    summary = {
        "image": str(path),
        "width": picture.width,
        "height": picture.height,
        "num_segments": result.num_segments,
        "lowres_labels": result.lowres_labels.tolist(),
        "segments": segments,
        "model": segmenter.model_info["model"],
        "config": segmenter.config.to_dict(),
        "config_hash": segmenter.config.config_hash,
    }
    if namer is None:
        overlay(picture, result.labels).save(f"{stem}.overlay.png")
    else:
        summary.update(_named(namer, picture, result, segments, stem))
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=2))
    logger.info("%s: %d segments -> %s.*.png, %s.json", path, result.num_segments, stem, stem)


def _named(namer: Namer, picture: Image.Image, result, segments: list[dict], stem: Path) -> dict:
    """Write the class map and the named overlay; returns the JSON's naming fields (segments gain theirs)."""
    classes, scores, class_map = namer.name(picture, result)
    names = namer.vocabulary.names
    for segment in segments:
        class_id = int(classes[segment["id"]])
        segment.update({"class": class_id, "class_name": names[class_id] if class_id != UNKNOWN else "unknown",
                        "class_score": round(float(scores[segment["id"]]), 6)})
    Image.fromarray(class_map.astype(np.uint8)).save(f"{stem}.classes.png")
    shown = sorted({int(c) for c in np.unique(class_map)})
    entries = [(legend_colour(c, UNKNOWN), names[c] if c != UNKNOWN else "unknown") for c in shown]
    with_legend(overlay(picture, class_map, unknown=UNKNOWN), entries).save(f"{stem}.overlay.png")
    return {"classes": list(names), "templates": list(namer.vocabulary.templates), "min_score": namer.min_score,
            "clip": namer.clip.info}
