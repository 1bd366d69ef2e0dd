"""Mini-batch k-means over a stream."""

import numpy as np
import pytest

from jobs.tools.kmeans import KMeansConfig, MiniBatchKMeans


def blobs(seed=0, per_cluster=200):
    generator = np.random.default_rng(seed)
    centres = np.eye(4, 16) * 10
    points = np.concatenate([centre + generator.normal(0, 0.5, (per_cluster, 16)) for centre in centres])
    truth = np.repeat(np.arange(4), per_cluster)
    order = generator.permutation(len(points))
    return points[order].astype(np.float16), truth[order]


def split(points, sizes):
    """The same points cut into record batches of varying sizes."""
    cuts = np.cumsum(sizes)
    return lambda: iter(np.split(points, cuts[cuts < len(points)]))


def test_recovers_separated_clusters():
    points, truth = blobs()
    model = MiniBatchKMeans(KMeansConfig(num_clusters=4, batch_size=64, epochs=3)).fit(split(points, [100] * 8))
    predicted = model.predict(points)
    # Each true cluster maps onto exactly one predicted cluster, and vice versa.
    pairs = set(zip(truth.tolist(), predicted.tolist()))
    assert len(pairs) == 4 and len({p for _, p in pairs}) == 4


def test_same_seed_same_centres_however_the_stream_is_cut():
    points, _ = blobs()
    config = KMeansConfig(num_clusters=4, batch_size=50, epochs=2, seed=3)
    one = MiniBatchKMeans(config).fit(split(points, [800]))
    other = MiniBatchKMeans(config).fit(split(points, [7, 93, 13, 300, 387]))
    assert np.array_equal(one.centres.numpy(), other.centres.numpy())


def test_fewer_points_than_clusters_is_an_error_that_says_what_to_do():
    with pytest.raises(ValueError, match="only 3 points.*fewer classes"):
        MiniBatchKMeans(KMeansConfig(num_clusters=5)).fit(lambda: iter([np.ones((3, 2))]))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="num_clusters must be a positive integer"):
        KMeansConfig(num_clusters=0)
