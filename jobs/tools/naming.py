"""``emerdiff name``: every segment of an output named with a class from a list, from its stored CLIP
embedding and the class names' text embeddings (docs/method.md, "Names for segments").

Needs only text: no image is read and no Stable Diffusion is loaded, so a vocabulary can change at
any time. Writes a class table (``schemas.classes``) that ``export --clusters``, ``evaluate
--clusters`` and ``preview --clusters`` read, with the names in its ``classes.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from tqdm import tqdm

from emerdiff.naming import DEFAULT_TEMPLATES, Vocabulary, class_name_problems, template_problems
from pipeline.config import option, output_option
from schemas.classes import KIND_NAMES, ClassTableWriter
from schemas.labels import CLIP_EMBEDDING
from schemas.reading import flatten_segments, iter_shards, read_job
from schemas.urls import has_scheme, read_list_file, redact_url

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NameConfig:
    output: str = output_option()
    classes: str = option(
        help="Class names: a comma-separated list ('cat,sofa,wall') or a text file (local or fsspec URL) with one "
             "name per line ('#' comments and blank lines skipped). Class ids are positions in the list.",
        metavar="LIST_OR_FILE")
    destination: str = option(help="Class table folder to write.", name="--out", metavar="DIR")
    templates: str | None = option(
        None, "Text file of prompt templates, one per line, each with one {} for the class name; a file holding "
              "just {} uses the bare names. Default: the built-in photo phrases (docs/tools.md).", metavar="FILE")
    min_score: float | None = option(
        None, "Segments whose class probability is below this become unknown (class 255). Default: every segment "
              "is named.", metavar="P")
    clip_model: str | None = option(
        None, "Where to load the output's CLIP model from, when not from where labelling did (a local copy, say); "
              "its weights must be the same.", metavar="SRC")
    device: str | None = option(None, "torch device for the text tower; default CUDA when present.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be a probability in [0, 1], got {self.min_score}")


def name_segments(config: NameConfig) -> dict:
    """Write the class table; returns what its ``classes.json`` records. ValueError, before anything is
    written, for an output without CLIP embeddings, a bad class list or templates, or another model."""
    recorded = _recorded_clip(config)
    names = class_names(config.classes, config.storage_options)
    templates = read_templates(config.templates, config.storage_options)
    problems = class_name_problems(names) + template_problems(templates)
    if problems:
        raise ValueError("; ".join(problems))
    clip = _load_clip(config, recorded)
    vocabulary = Vocabulary.build(clip, names, templates)
    writer = ClassTableWriter(config.destination, config.storage_options, len(names))
    columns = ["key", "segments.id", f"segments.{CLIP_EMBEDDING}"]
    for shard, batch in tqdm(iter_shards(config.output, columns, config.storage_options, ok_only=True),
                             desc="naming", unit="shard", disable=None):
        segments = flatten_segments(batch)
        if not len(segments.id):  # a shard of error rows only
            continue
        classes, scores = vocabulary.assign(segments.clip_embedding, config.min_score)
        writer.write_batch(shard, batch, segments, classes, scores)
    return writer.close(KIND_NAMES, redact_url(config.output), list(names), templates=list(templates),
                        min_score=config.min_score, clip_model=recorded["clip_model"],
                        clip_weights_sha256=recorded.get("clip_weights_sha256"))


def class_names(classes: str, storage_options: dict) -> list[str]:
    """The class list: read from a file when ``classes`` names one (a URL, an existing local file, or a
    path-like word such as ``names.txt``), else the comma-separated names, trimmed."""
    path_like = "," not in classes and ("/" in classes or Path(classes).suffix.lower() in (".txt", ".csv", ".lst"))
    if has_scheme(classes) or Path(classes).is_file() or path_like:
        names = read_list_file(classes, storage_options, what="class list", flag="--classes", entries="class names")
        return [name.strip() for name in names]
    return [name.strip() for name in classes.split(",")]


def read_templates(templates: str | None, storage_options: dict) -> tuple[str, ...]:
    """The templates of a ``--templates`` file, one per line; the built-in ones without a file."""
    if templates is None:
        return DEFAULT_TEMPLATES
    return tuple(read_list_file(templates, storage_options, what="template file", flag="--templates", entries="templates"))


def _recorded_clip(config: NameConfig) -> dict:
    """The output's CLIP record from _job.json; ValueError saying how to label with embeddings when it has none."""
    try:
        job = read_job(config.output, config.storage_options)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from None
    recorded = job.get("clip")
    if not recorded:
        raise ValueError(
            f"{redact_url(config.output)} was labelled without CLIP embeddings, so its segments cannot be named. "
            "Label the shards again with them, into a new --output (or with --overwrite): "
            "`emerdiff label --input ... --output NEW --clip-model openai/clip-vit-base-patch16`")
    return recorded


def _load_clip(config: NameConfig, recorded: dict):
    from emerdiff.clip import SegmentCLIP
    from pipeline.models import local_model_source

    source = local_model_source(config.clip_model or recorded["clip_model"], config.storage_options)
    clip = SegmentCLIP.from_pretrained(source, resolution=recorded["clip_resolution"], device=config.device)
    expected = recorded.get("clip_weights_sha256")
    if expected is not None and clip.info["clip_weights_sha256"] != expected:
        raise ValueError(
            f"the CLIP weights at {redact_url(config.clip_model or recorded['clip_model'])!r} (sha256 "
            f"{clip.info['clip_weights_sha256']}) are not those the embeddings were made with (sha256 {expected}); "
            "point --clip-model at the model the output was labelled with")
    return clip
