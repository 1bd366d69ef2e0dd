"""Blur, assignment helpers and k-means against answers worked out by hand or by numpy."""

import numpy as np
import pytest
import torch

from emerdiff.kmeans import kmeans
from emerdiff.maps import confidence_margin, difference_norms, gaussian_blur, mean_per_label, segment_embeddings
from emerdiff.segmentation import segment_statistics


def _numpy_blur(image: np.ndarray, size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - size // 2
    kernel = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, size // 2, mode="reflect")  # numpy's reflect is OpenCV's BORDER_REFLECT_101
    out = np.zeros_like(image)
    for dy in range(size):
        for dx in range(size):
            out += kernel[dy, dx] * padded[dy : dy + image.shape[0], dx : dx + image.shape[1]]
    return out


def test_separable_blur_equals_the_full_2d_gaussian_with_reflect_101_borders():
    maps = torch.from_numpy(np.random.default_rng(0).random((3, 9, 11)))
    blurred = gaussian_blur(maps, 5, 3.0).numpy()
    for k in range(3):
        np.testing.assert_allclose(blurred[k], _numpy_blur(maps[k].numpy(), 5, 3.0), rtol=1e-10)


def test_difference_maps_blur_the_images_before_the_norm():
    """d = ||blur(I-) - blur(I+)||_2 over RGB (spec step 10), computed here with a full 2-D numpy kernel.

    Broken variant caught: the blur applied to the norm of the difference instead of the images."""
    rng = np.random.default_rng(2)
    minus, plus = (torch.from_numpy(rng.normal(0, 1, (2, 3, 12, 9))).float() for _ in range(2))

    def expected(first, second):
        blurred = [np.stack([_numpy_blur(image[c].numpy().astype(np.float64), 3, 0.8) for c in range(3)])
                   for image in (first, second)]
        return np.sqrt(((blurred[0] - blurred[1]) ** 2).sum(axis=0))

    def check(norms):
        for pair in range(2):
            np.testing.assert_allclose(norms[pair].numpy(), expected(minus[pair], plus[pair]), rtol=1e-5, atol=1e-5)

    check(difference_norms(minus, plus, 3, 0.8))
    norm_then_blur = gaussian_blur((minus - plus).pow(2).sum(dim=1).sqrt(), 3, 0.8)
    with pytest.raises(AssertionError):
        check(norm_then_blur)


def test_blur_keeps_a_constant_map_and_size_one_is_identity():
    constant = torch.full((1, 6, 6), 2.5, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(constant, 5, 3.0), constant)
    noisy = torch.rand(2, 5, 5)
    assert torch.equal(gaussian_blur(noisy, 1, 3.0), noisy)


def test_confidence_margin_is_best_minus_second_over_best():
    maps = torch.tensor([[[4.0, 1.0]], [[1.0, 1.0]], [[0.0, 3.0]]])  # (K=3, 1, 2)
    # pixel 0: best 4, second 1 -> 0.75; pixel 1: best 3, second 1 -> 2/3
    torch.testing.assert_close(confidence_margin(maps), torch.tensor([[0.75, 2 / 3]]))


def test_mean_per_label_averages_each_label_and_gives_zero_to_absent_ones():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    labels = torch.tensor([[0, 0], [2, 0]])
    # label 0: (1 + 3 + 7) / 3; label 1: absent; label 2: 5
    torch.testing.assert_close(mean_per_label(values, labels, 3), torch.tensor([11 / 3, 0.0, 5.0]))


def test_segment_embedding_weights_cells_by_coverage():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [4.0, 0.0]])  # 2x2 grid of tokens
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[0, 0:2] = 1  # half of the top-left cell
    labels[2:4, 2:4] = 2  # all of the bottom-right cell
    embeddings = segment_embeddings(labels, features, 4)
    torch.testing.assert_close(embeddings[1], features[0])
    torch.testing.assert_close(embeddings[2], features[3])
    # label 0 covers half of cell 0 and all of cells 1 and 2: (0.5*f0 + f1 + f2) / 2.5
    torch.testing.assert_close(embeddings[0], (0.5 * features[0] + features[1] + features[2]) / 2.5)
    assert torch.count_nonzero(embeddings[3]) == 0


def test_segment_statistics_area_and_coco_bbox():
    labels = np.array([[0, 0, 1], [0, 2, 1], [0, 0, 0]])
    area, bbox = segment_statistics(labels, 4)
    assert area.tolist() == [6, 2, 1, 0]
    assert bbox.tolist() == [[0, 0, 3, 3], [2, 0, 1, 2], [1, 1, 1, 1], [0, 0, 0, 0]]


def test_kmeans_separates_clear_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.from_numpy(np.concatenate([c + rng.normal(0, 0.1, (20, 2)) for c in centres])).float()
    assignment = kmeans(points, 3, 50, restarts=5, seed=3)
    groups = assignment.view(3, 20)
    assert all(len(set(group.tolist())) == 1 for group in groups)
    assert len(set(groups[:, 0].tolist())) == 3
    assert torch.equal(assignment, kmeans(points, 3, 50, restarts=5, seed=3))


def test_kmeans_on_identical_points_does_not_crash():
    assignment = kmeans(torch.ones(8, 3), 4, 10, restarts=3, seed=0)
    assert assignment.shape == (8,) and assignment.max() < 4
