"""Naming segments from their embeddings: nearest class text embedding, ties, unknowns, templates."""

import numpy as np
import pytest

from emerdiff.clip import SegmentCLIP
from emerdiff.naming import DEFAULT_TEMPLATES, UNKNOWN, Vocabulary, class_name_problems, template_problems
from emerdiff.tiny import TINY_CLIP_RESOLUTION

NAMES = ["cat", "sofa", "wall", "sky"]


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return SegmentCLIP.from_pretrained(str(tiny_clip), resolution=TINY_CLIP_RESOLUTION, device="cpu")


@pytest.fixture(scope="module")
def vocabulary(clip):
    return Vocabulary.build(clip, NAMES)


def test_class_embeddings_are_the_normalised_mean_over_templates(clip, vocabulary):
    prompts = clip.text_embeddings([template.format("sofa") for template in DEFAULT_TEMPLATES]).numpy()
    mean = prompts.mean(axis=0)
    np.testing.assert_allclose(vocabulary.embeddings[1], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert vocabulary.logit_scale == pytest.approx(100.0, rel=1e-4)  # the tiny CLIP's, set like OpenAI's
    # Different names embed differently (the tiny CLIP's token embeddings have unit variance).
    cosine = vocabulary.embeddings @ vocabulary.embeddings.T
    assert cosine[~np.eye(len(NAMES), dtype=bool)].max() < 0.99


def test_a_segment_embedding_equal_to_a_class_embedding_gets_that_class(vocabulary):
    # Stored as float16, as the output stores them.
    stored = vocabulary.embeddings[[2, 0, 3, 1]].astype(np.float16)
    classes, scores = vocabulary.assign(stored)
    assert classes.tolist() == [2, 0, 3, 1]
    assert (scores > 1 / len(NAMES)).all() and (scores <= 1).all()


def test_the_score_is_the_softmax_probability_of_the_class(vocabulary):
    segment = np.random.default_rng(0).normal(size=(1, vocabulary.embeddings.shape[1]))
    classes, scores = vocabulary.assign(segment)
    cosine = (segment / np.linalg.norm(segment)) @ vocabulary.embeddings.T
    probabilities = np.exp(100 * cosine[0]) / np.exp(100 * cosine[0]).sum()
    assert classes[0] == probabilities.argmax()
    assert scores[0] == pytest.approx(probabilities.max(), rel=1e-4)


def test_an_exact_tie_goes_to_the_lowest_class_id():
    direction = np.eye(3)[0]
    tied = Vocabulary(names=("b", "a", "c"), templates=("{}",), embeddings=np.stack([direction, direction, np.eye(3)[1]]),
                      logit_scale=100.0)
    classes, scores = tied.assign(direction[None])
    assert classes.tolist() == [0] and scores[0] == pytest.approx(0.5, abs=1e-6)


def test_min_score_makes_unsure_segments_unknown(vocabulary):
    sure = vocabulary.embeddings[0]
    unsure = vocabulary.embeddings[0] + vocabulary.embeddings[1]  # halfway between cat and sofa
    classes, scores = vocabulary.assign(np.stack([sure, unsure]), min_score=0.9)
    assert classes[0] == 0 and scores[0] >= 0.9
    assert classes[1] == UNKNOWN and scores[1] < 0.9
    assert vocabulary.assign(np.stack([sure, unsure]))[0][1] in (0, 1)  # without a minimum it is named


def test_a_template_of_just_braces_uses_the_bare_names(clip):
    bare = Vocabulary.build(clip, NAMES, templates=["{}"])
    np.testing.assert_allclose(bare.embeddings, clip.text_embeddings(NAMES).numpy(), rtol=1e-5, atol=1e-6)


def test_bad_class_lists_and_templates_are_named():
    assert class_name_problems(["cat", " Cat "]) == ["class 'cat' is listed twice (names compare trimmed, in lower case)"]
    assert class_name_problems(["cat", "  "]) == ["class names must not be empty (position 1)"]
    assert class_name_problems([]) == ["the class list is empty"]
    assert "at most 255 classes" in class_name_problems([f"c{i}" for i in range(256)])[0]
    assert template_problems(["a photo of a {}.", "no name here", "{} and {}", "{0} {}"]) == [
        f"template {t!r} must hold exactly one {{}} (the class name) and no other braces"
        for t in ("no name here", "{} and {}", "{0} {}")]
    assert template_problems([]) == ["the template list is empty"]


def test_embeddings_of_another_model_are_refused(vocabulary):
    with pytest.raises(ValueError, match="another CLIP model"):
        vocabulary.assign(np.zeros((2, 7)))
