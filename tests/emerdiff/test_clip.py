"""SegmentCLIP against a second, slow implementation of the MaskCLIP recipe, and the recipe's rules.

The agreement test also runs against plain CLIP (full attention in the last layer) and must fail
there (``broken_variants.fails_when``), so it cannot pass by accident.
"""

import json
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from broken_variants import fails_when
from maskclip_reference import dense as slow_dense
from maskclip_reference import segment_embeddings as slow_segments
from PIL import Image

from emerdiff.clip import SegmentCLIP, pool_segments
from emerdiff.loading import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ModelLoadError
from emerdiff.tiny import TINY_CLIP_RESOLUTION

RELATIVE = 1e-5


@pytest.fixture(scope="module")
def clip(tiny_clip):
    return SegmentCLIP.from_pretrained(str(tiny_clip), resolution=TINY_CLIP_RESOLUTION, device="cpu")


@pytest.fixture(scope="module")
def picture(photos):
    return Image.fromarray(photos["chelsea"]).resize((53, 37))  # odd size: cells of unequal pixel counts


def blocky(shape, num_masks, seed=0):
    return np.random.default_rng(seed).integers(0, num_masks, shape)


def _plain_clip():
    """Broken variant: the last layer runs as CLIP runs it, with query-key attention over every token."""
    return mock.patch("emerdiff.clip.value_path", lambda layer, hidden: layer(hidden, attention_mask=None))


def _relative_error(fast, slow) -> float:
    return float(np.abs(fast - slow).max() / np.abs(slow).max())


def test_segment_embeddings_agree_with_the_slow_recipe(clip, picture):
    """Dense grid and segment embeddings within 1e-5 (relative) of the per-token float64 recipe,
    with position embeddings interpolated (an 8 x 8 grid from a model trained on 4 x 4).

    Broken variant caught: plain CLIP's last layer (query-key attention) instead of the value path."""
    labels = blocky((37, 53), 5)
    slow_grid = slow_dense(clip.model, picture, clip.resolution, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    expected = slow_segments(slow_grid, labels, 5)

    def check():
        grid = clip.dense_embeddings([picture])[0].numpy()
        assert grid.shape == (8, 8, 16)
        assert _relative_error(grid, slow_grid) < RELATIVE
        assert _relative_error(clip.segment_embeddings(picture, labels, 5), expected) < RELATIVE

    check()
    fails_when([_plain_clip()], check)


def test_batched_images_get_the_embeddings_each_gets_alone(clip, photos):
    pictures = [Image.fromarray(photos[name]).resize((40, 30)) for name in ("astronaut", "coffee")]
    maps = [blocky((30, 40), 3, seed) for seed in (1, 2)]
    together = clip.segment_embeddings_batch(pictures, maps, 3)
    for picture, labels, batched in zip(pictures, maps, together):
        np.testing.assert_allclose(batched, clip.segment_embeddings(picture, labels, 3), rtol=0, atol=1e-5)


def test_a_segment_covering_exactly_one_cell_gets_that_cell_embedding():
    grid = np.random.default_rng(0).normal(size=(4, 4, 6))
    labels = np.zeros((8, 12), dtype=np.int64)  # cells of 2 x 3 pixels
    labels[2:4, 6:9] = 1  # exactly cell (1, 2)
    embeddings = pool_segments(grid, labels, num_masks=3)
    np.testing.assert_allclose(embeddings[1], grid[1, 2] / np.linalg.norm(grid[1, 2]), rtol=1e-6)
    assert np.linalg.norm(embeddings[0]) == pytest.approx(1.0) and not embeddings[2].any()  # id 2 has no pixel


def test_cells_count_by_the_pixels_a_segment_has_in_them():
    grid = np.zeros((2, 2, 2))
    grid[0, 0], grid[0, 1] = [1.0, 0.0], [0.0, 1.0]
    labels = np.ones((4, 4), dtype=np.int64)
    labels[0:2, 0:2] = 0
    labels[0, 2] = 0  # segment 0: four pixels of cell (0, 0), one of cell (0, 1)
    expected = np.array([4.0, 1.0]) / np.linalg.norm([4.0, 1.0])
    np.testing.assert_allclose(pool_segments(grid, labels, 2)[0], expected, rtol=1e-6)


def test_the_model_folder_s_normalisation_is_used(clip, tiny_clip, tmp_path, picture):
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]}))
    other = SegmentCLIP.from_pretrained(str(folder), resolution=TINY_CLIP_RESOLUTION, device="cpu")
    assert other.info["clip_weights_sha256"] == clip.info["clip_weights_sha256"]
    expected = slow_dense(other.model, picture, other.resolution, (0.5, 0.5, 0.5), (0.25, 0.5, 1.0))
    assert _relative_error(other.dense_embeddings([picture])[0].numpy(), expected) < RELATIVE
    assert _relative_error(clip.dense_embeddings([picture])[0].numpy(), expected) > 1e-2


def test_the_weights_hash_does_not_depend_on_the_dtype(tiny_clip):
    float16 = SegmentCLIP.from_pretrained(str(tiny_clip), resolution=TINY_CLIP_RESOLUTION, device="cpu", dtype="float16")
    float32 = SegmentCLIP.from_pretrained(str(tiny_clip), resolution=TINY_CLIP_RESOLUTION, device="cpu")
    assert float16.model.dtype == torch.float16
    assert float16.info["clip_weights_sha256"] == float32.info["clip_weights_sha256"]


def test_bad_sources_and_resolutions_are_clear_errors(tiny_clip, tmp_path):
    with pytest.raises(ValueError, match=r"multiple of the CLIP model's patch size \(8\), got 60"):
        SegmentCLIP.from_pretrained(str(tiny_clip), resolution=60, device="cpu")
    with pytest.raises(ModelLoadError, match="neither an existing folder nor a Hub id"):
        SegmentCLIP.from_pretrained(str(tmp_path / "missing"), device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        SegmentCLIP.from_pretrained(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="is a URL"):
        SegmentCLIP.from_pretrained("s3://bucket/clip", device="cpu")


def test_a_label_map_that_does_not_fit_its_image_is_refused(clip, picture):
    with pytest.raises(ValueError, match="does not fit"):
        clip.segment_embeddings(picture, np.zeros((10, 10), dtype=np.int64), 2)
