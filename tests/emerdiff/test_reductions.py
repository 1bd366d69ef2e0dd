"""Same labels whatever the batch, on every device: the method's sums never depend on thread timing.

On CUDA, ``index_add_``, ``scatter_add_``, floating-point ``cumsum`` and their kin add in whatever
order the threads arrive (``torch.use_deterministic_algorithms`` lists them), so a labelling job and
a bare loop could disagree in the last bit, and then in a label. A CPU runs them in order, so here
the check is made as CUDA's deterministic mode makes it: the method is run under a dispatch mode
that refuses every such operation.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from emerdiff.kmeans import kmeans
from emerdiff.maps import mean_per_label

aten = torch.ops.aten

# Operations torch.use_deterministic_algorithms lists as nondeterministic on CUDA tensors (forward),
# with the argument that makes them so where it depends on one.
_ALWAYS = {aten.index_add, aten.index_add_, aten.scatter_add, aten.scatter_add_, aten.scatter_reduce,
           aten.scatter_reduce_, aten.histc, aten.index_copy, aten.index_copy_}
_WHEN_ACCUMULATING = {aten.index_put, aten.index_put_, aten._index_put_impl_, aten.put, aten.put_}


def _nondeterministic_on_cuda(func, args, kwargs) -> bool:
    packet = func.overloadpacket
    if packet in _ALWAYS:
        return True
    if packet in _WHEN_ACCUMULATING:
        return bool(kwargs.get("accumulate", args[3] if len(args) > 3 else False))
    if packet is aten.bincount:
        return kwargs.get("weights", args[1] if len(args) > 1 else None) is not None
    if packet is aten.cumsum:
        return args[0].is_floating_point() or args[0].is_complex()
    return False


class DeterministicAsOnCuda(TorchDispatchMode):
    """Raises what CUDA raises under ``torch.use_deterministic_algorithms(True)``, for CPU tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _nondeterministic_on_cuda(func, args, kwargs):
            raise RuntimeError(f"{func} does not have a deterministic implementation on CUDA")
        return func(*args, **kwargs)


def test_the_whole_method_uses_no_operation_cuda_runs_nondeterministically(tiny_model, tiny_config, photos):
    from emerdiff import EmerDiffSegmenter

    segmenter = EmerDiffSegmenter.from_pretrained(
        str(tiny_model), config=tiny_config.replace(feature_samples=3, kmeans_restarts=3), device="cpu")
    with DeterministicAsOnCuda():
        result = segmenter.segment(photos["coffee"])
    assert result.num_segments >= 2


def test_the_mode_refuses_what_cuda_refuses():
    values = torch.arange(6.0)
    with DeterministicAsOnCuda(), pytest.raises(RuntimeError, match="deterministic"):
        torch.zeros(2).index_add_(0, torch.tensor([0, 1, 0, 1, 0, 1]), values)
    with DeterministicAsOnCuda(), pytest.raises(RuntimeError, match="deterministic"):
        values.cumsum(0)
    with DeterministicAsOnCuda():
        assert values.long().cumsum(0)[-1] == 15  # integer sums are exact in any order


def test_feature_sums_are_bitwise_the_same_in_any_chunking(tiny_segmenter):
    """Three images x 5 draws in chunks of 1 to 16 rows, against each image alone in one chunk.

    The captured features are stood in for by a function of each row's input alone, so that only
    the summation is compared: whatever the chunks, every image's draws are added in draw order."""
    denoiser = tiny_segmenter.denoiser
    generator = torch.Generator("cpu").manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=generator)
    noise = torch.randn(5, 4, 16, 16, generator=generator)

    def rows_features(noisy):  # (rows, tokens, channels), of magnitudes that make rounding matter
        return (noisy.flatten(1)[:, :, None] * torch.logspace(-3, 3, 7)).exp()

    original = denoiser._features
    denoiser._features = rows_features
    try:
        alone = torch.cat([denoiser.query_features(latents[i : i + 1], noise, chunk=5) for i in range(3)])
        for chunk in range(1, 17):
            assert torch.equal(denoiser.query_features(latents, noise, chunk), alone), chunk
    finally:
        denoiser._features = original


def test_mean_per_label_is_the_mean_over_each_labels_pixels():
    generator = torch.Generator("cpu").manual_seed(1)
    values = torch.rand(64, 64, generator=generator)
    labels = torch.randint(0, 5, (64, 64), generator=generator)
    labels[labels == 3] = 4  # label 3 has no pixel: mean 0
    expected = torch.tensor([values[labels == k].double().mean() if (labels == k).any() else 0.0 for k in range(5)])
    torch.testing.assert_close(mean_per_label(values, labels, 5).double(), expected, rtol=1e-6, atol=0)


def test_kmeans_seeding_runs_under_cudas_deterministic_mode_and_repeats():
    """k-means++ draws by inverse CDF over integer cumulative weights: exact sums in any order."""
    generator = torch.Generator("cpu").manual_seed(2)
    points = torch.randn(500, 8, generator=generator)
    assignment = kmeans(points, 6, 30, restarts=4, seed=5)
    with DeterministicAsOnCuda():
        assert torch.equal(kmeans(points, 6, 30, restarts=4, seed=5), assignment)
    assert len(torch.unique(assignment)) == 6
