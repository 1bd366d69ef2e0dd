"""What a GPU would punish, checked without one.

- No host/device synchronisation inside the denoising loop: every op that must read a tensor's
  value on the host (``.item()``, ``bool(tensor)``, ``int(tensor)``, ops with data-dependent output
  shapes) goes through ``aten._local_scalar_dense`` or a data-dependent op, which a dispatch mode
  sees on any device; ``.cpu()``, ``.tolist()`` and ``.numpy()`` are blocked too.
- Random draws happen on the CPU (float32, the spec's determinism convention) and reach the device
  in one copy per stage. On the meta device a CPU -> device copy is a visible ``_to_copy``.
- The recorded attention stays on the device.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.models import random_parts
from emerdiff import EmerDiffSegmenter

HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,  # .item(), bool(), int(), float()
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.equal.default,
    torch.ops.aten._unique2.default,
}


class NoHostReads(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            raise AssertionError(f"{func} reads a tensor on the host: a device sync")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_host_copies(monkeypatch):
    def blocked(self, *args, **kwargs):
        raise AssertionError("a tensor was copied to the host")

    for name in ("cpu", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, blocked)


def test_the_denoising_loop_never_syncs(tiny_config, photos, no_host_copies):
    config = tiny_config.replace(num_masks=2, feature_samples=1, kmeans_restarts=1, modulation_timestep=61)
    segmenter = EmerDiffSegmenter(random_parts("tiny"), config, torch.device("cpu"), torch.float32)
    denoiser = segmenter.denoiser
    with torch.inference_mode():
        latent = torch.randn(1, 4, 16, 16)
        samples = denoiser.inversion.samples(latent, torch.Generator("cpu").manual_seed(0))
        masks = torch.zeros(4, segmenter._modulation_side**2)
        masks[0::2, :8], masks[1::2, :8] = -10.0, 10.0
        with NoHostReads():
            noise_maps = denoiser.invert(latent, samples, 4)
            images = segmenter._decode(denoiser.modulated_runs(samples[:1], noise_maps, masks), chunk=4)
    assert images.shape == (4, 3, 128, 128)


class CopiesAndDraws(TorchDispatchMode):
    """Counts CPU -> meta copies and records every random draw."""

    def __init__(self):
        super().__init__()
        self.uploads = 0
        self.draws: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        sources = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        # Under inference mode a copy reaches the mode as aten.to, otherwise as aten._to_copy.
        moves = func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to)
        if moves and sources[0].device.type == "cpu" and output.device.type == "meta":
            self.uploads += 1
        if func.overloadpacket.__name__ in ("randn", "rand", "normal", "uniform"):
            self.draws.append(output)
        return output


@pytest.fixture(scope="module")
def meta_segmenter(tiny_config):
    with torch.device("meta"):
        parts = random_parts("tiny")
    config = tiny_config.replace(feature_samples=5, modulation_timestep=61)
    return EmerDiffSegmenter(parts, config, torch.device("meta"), torch.float32)


def test_random_draws_are_made_on_the_cpu_and_moved_once(meta_segmenter):
    latent = torch.zeros(1, 4, 16, 16, device="meta")
    inversion = meta_segmenter.denoiser.inversion
    for stage, expected_draws in (
        (lambda: meta_segmenter._features(latent), meta_segmenter.config.feature_samples),
        (lambda: inversion.samples(latent, torch.Generator("cpu").manual_seed(0)), len(inversion.timesteps)),
    ):
        with torch.inference_mode(), CopiesAndDraws() as seen:
            result = stage()
        assert result.device.type == "meta"
        assert len(seen.draws) == expected_draws
        assert all(d.device.type == "cpu" and d.dtype == torch.float32 for d in seen.draws)
        assert seen.uploads == 1  # all draws stacked on the CPU, then one copy


def test_recorded_attention_stays_on_the_device(meta_segmenter):
    denoiser = meta_segmenter.denoiser
    latent = torch.zeros(1, 4, 16, 16, device="meta")
    samples = latent.expand(len(denoiser.timesteps), -1, -1, -1)
    with torch.inference_mode():
        noise_maps = denoiser.invert(latent, samples, 8)
        final = denoiser.modulated_runs(samples[:1], noise_maps, torch.zeros(2, meta_segmenter._modulation_side**2, device="meta"))
    state = denoiser.state
    recorded = tree_flatten((state.query_key, state.probabilities, state.outputs))[0]
    assert recorded and all(t.device.type == "meta" for t in recorded)
    assert noise_maps.device.type == final.device.type == "meta"
