"""Naming segments: class names -> text embeddings -> the nearest class of each segment embedding.

Needs only text and the stored segment embeddings, so a vocabulary can change at any time without
the images or Stable Diffusion (docs/method.md, "Names for segments", naming steps 1-4).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

UNKNOWN = 255  # the class of a segment scored below the minimum; also the ignore value of class maps
MAX_CLASSES = 255  # ids 0..254, so class maps stay 8-bit PNGs with UNKNOWN free
# Ours: short generic photo phrases (the paper does not list its prompts); `{}` is the class name.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
)


def name_key(name: str) -> str:
    """How class names compare (duplicates in a list, names in evaluation): trimmed, lower case."""
    return name.strip().lower()


def class_name_problems(names: Sequence[str]) -> list[str]:
    """What is wrong with a class list: empty, empty names, duplicates (compared by ``name_key``), too many."""
    problems = []
    if not names:
        problems.append("the class list is empty")
    blank = [index for index, name in enumerate(names) if not name.strip()]
    if blank:
        problems.append(f"class names must not be empty (position {blank[0]})")
    repeated = [name for name, count in Counter(name_key(n) for n in names if n.strip()).items() if count > 1]
    if repeated:
        problems.append(f"class {repeated[0]!r} is listed twice (names compare trimmed, in lower case)")
    if len(names) > MAX_CLASSES:
        problems.append(f"at most {MAX_CLASSES} classes fit (id {UNKNOWN} marks unknown segments), got {len(names)}")
    return problems


def template_problems(templates: Sequence[str]) -> list[str]:
    """What is wrong with a template list: empty, or a template without exactly one ``{}`` to hold the name."""
    if not templates:
        return ["the template list is empty"]
    problems = []
    for template in templates:
        try:
            ok = template.count("{}") == 1 and template.format("x") == template.replace("{}", "x")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            problems.append(f"template {template!r} must hold exactly one {{}} (the class name) and no other braces")
    return problems


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Class names with their text embeddings: what ``assign`` compares segment embeddings against."""

    names: tuple[str, ...]
    templates: tuple[str, ...]
    embeddings: np.ndarray  # (C, D) float32, unit rows: the mean over templates, normalised again
    logit_scale: float  # s of softmax(s * cos)

    @classmethod
    def build(cls, clip, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> Vocabulary:
        """Embed every ``template.format(name)`` with ``clip`` (a SegmentCLIP); ValueError for a bad list."""
        problems = class_name_problems(names) + template_problems(templates)
        if problems:
            raise ValueError("; ".join(problems))
        prompts = [template.format(name) for name in names for template in templates]
        per_prompt = clip.text_embeddings(prompts).cpu().numpy().reshape(len(names), len(templates), -1)
        return cls(tuple(names), tuple(templates), _unit(per_prompt.mean(axis=1)), clip.logit_scale)

    def assign(self, embeddings: np.ndarray, min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(classes, scores) of (n, D) segment embeddings: the most probable class under softmax(s * cos)
        (the lowest id on an exact tie) and its probability; UNKNOWN where that is below ``min_score``."""
        if embeddings.shape[1:] != self.embeddings.shape[1:]:
            raise ValueError(f"segment embeddings have {embeddings.shape[1:]} values, the class embeddings "
                             f"{self.embeddings.shape[1:]}: were they made with another CLIP model?")
        cosine = _unit(embeddings.astype(np.float32)) @ self.embeddings.T  # (n, C)
        logits = self.logit_scale * cosine
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        classes = probabilities.argmax(axis=1)  # numpy takes the first maximum: the lowest id
        scores = probabilities[np.arange(len(classes)), classes].astype(np.float32)
        if min_score is not None:
            classes = np.where(scores < min_score, UNKNOWN, classes)
        return classes.astype(np.int64), scores


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
