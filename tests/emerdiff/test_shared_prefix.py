"""The shared UNet prefix at the modulation step (emerdiff/denoising.py, SharedPrefix).

Every modulated run of a chunk starts from the same latent, so the UNet's work before the
modulation layer is computed once at batch 1 and fanned out to the runs there. These tests
check that it changes no result (against the full-batch path, ``shared_prefix = None``) and
that the prefix really runs once per chunk.
"""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch

from emerdiff import EmerDiffSegmenter
from emerdiff.attention import attention_layer_names, layer_grid_side
from emerdiff.denoising import Denoiser, SharedPrefix
from emerdiff.config import MODULATION_LAYER
from emerdiff.images import to_rgb


def _segmenter(tiny_model, config):
    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")


@pytest.fixture(scope="module")
def short_config(tiny_config):
    """Three denoising steps (41, 21, 1) instead of 15: the shortcut is in the first, the rest check what follows."""
    return tiny_config.replace(modulation_timestep=41)


def _latent(segmenter, image):
    return segmenter._encode([to_rgb(image)])


def _inverted(denoiser, latent):
    """The image's start x_{t_m} and noise maps z_t; records the reference attention when injecting."""
    samples = denoiser.inversion.samples(latent, torch.Generator("cpu").manual_seed(denoiser.config.seed))
    return samples[:1], denoiser.invert(latent, samples, chunk=len(samples))


def _modulations(tokens: int, runs: int, strength: float) -> torch.Tensor:
    """(runs, tokens): a +-lambda pair per mask; mask i holds every (runs/2)-th token from i, never empty."""
    pairs = runs // 2
    masks = (torch.arange(tokens)[None, :] % pairs == torch.arange(pairs)[:, None]).float()
    signs = torch.tensor([1.0, -1.0]) * strength
    return (signs[None, :, None] * masks[:, None, :]).reshape(runs, tokens)


@contextlib.contextmanager
def _full_batch(denoiser):
    """The path without the shortcut: every run computes the whole UNet at the modulation step."""
    shared, denoiser.shared_prefix = denoiser.shared_prefix, None
    try:
        yield
    finally:
        denoiser.shared_prefix = shared


@contextlib.contextmanager
def _conv_in_batches(unet):
    """Batch sizes seen by conv_in, the UNet's first layer: one entry per UNet call."""
    batches = []
    handle = unet.conv_in.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        yield batches
    finally:
        handle.remove()


def _both_paths(denoiser, latent, modulations):
    """Final latents of the modulated runs with the shared prefix, and with the full batch throughout."""
    start, noise_maps = _inverted(denoiser, latent)
    with _conv_in_batches(denoiser.unet) as batches:
        shared = denoiser.modulated_runs(start, noise_maps, modulations)
    # The prefix ran once, at batch 1; every later step at the full batch.
    assert batches == [1] + [len(modulations)] * (len(denoiser.timesteps) - 1)
    with _full_batch(denoiser):
        full = denoiser.modulated_runs(start, noise_maps, modulations)
    return shared, full


# The default layer in every mode, then other positions: a self-attention in a down block, the mid
# block, and the last attention of an up block and of the UNet (no skip of their block after them).
@pytest.mark.parametrize(("layer", "replay", "injection"), [
    (MODULATION_LAYER, "query_key", True),
    (MODULATION_LAYER, "probabilities", True),
    (MODULATION_LAYER, "query_key", False),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1", "probabilities", True),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", "query_key", False),
    ("up_blocks.1.attentions.1.transformer_blocks.0.attn1", "probabilities", True),
    ("up_blocks.3.attentions.1.transformer_blocks.0.attn2", "query_key", False),
])
@torch.inference_mode()
def test_the_shared_prefix_gives_the_full_batch_latents(tiny_model, short_config, photos, layer, replay, injection):
    config = short_config.replace(modulation_layer=layer, attention_replay=replay, attention_injection=injection)
    segmenter = _segmenter(tiny_model, config)
    latent = _latent(segmenter, photos["astronaut"])
    modulations = _modulations(segmenter._modulation_side ** 2, 6, config.modulation_strength)
    shared, full = _both_paths(segmenter.denoiser, latent, modulations)
    assert shared.shape == full.shape == (6, *latent.shape[1:])
    # Every run differs from its pair's other sign: the modulation was applied after the fan-out.
    assert (shared[0::2] - shared[1::2]).flatten(1).abs().amax(dim=1).min() > 1e-4
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_every_transformer_of_the_unet_can_share_its_prefix(tiny_model, short_config, photos):
    config = short_config.replace(modulation_timestep=21, attention_injection=False)  # 2 steps, no recording
    segmenter = _segmenter(tiny_model, config)
    latent = _latent(segmenter, photos["coffee"])
    scheduler_config = segmenter._parts.scheduler_config
    unet, denoiser = segmenter.denoiser.unet, segmenter.denoiser
    # Where the runs fan out depends on the Transformer2DModel only; alternate self- and cross-attention.
    transformers = sorted({name.rsplit(".transformer_blocks.", 1)[0] for name in attention_layer_names(unet)})
    assert len(transformers) == 16  # SD's layout: 6 in the down blocks, 1 in the mid block, 9 in the up blocks
    for index, transformer in enumerate(transformers):
        layer = f"{transformer}.transformer_blocks.0.attn{1 + index % 2}"
        # A second Denoiser on the same UNet replaces the processors; the first one's hooks stay idle.
        denoiser = Denoiser(unet, scheduler_config, denoiser.prompt_embedding, config.replace(modulation_layer=layer))
        assert denoiser.shared_prefix is not None, layer
        tokens = layer_grid_side(unet, layer, config.resolution) ** 2
        shared, full = _both_paths(denoiser, latent, _modulations(tokens, 2, config.modulation_strength))
        assert (shared[0] - shared[1]).abs().amax() > 1e-4, layer
        torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5, msg=lambda text: f"{layer}: {text}")


@pytest.mark.parametrize(("num_masks", "chunk_size"), [(2, 2), (3, 4), (4, 8)])
@torch.inference_mode()
def test_chunked_runs_share_the_prefix_once_per_chunk_and_keep_their_latents(tiny_model, short_config, photos,
                                                                             num_masks, chunk_size):
    segmenter = _segmenter(tiny_model, short_config.replace(num_masks=num_masks, chunk_size=chunk_size))
    latent = _latent(segmenter, photos["chelsea"])
    side = segmenter._modulation_side
    lowres = torch.arange(side * side).view(side, side) % num_masks  # every mask present
    masks = segmenter._token_masks(lowres, num_masks)

    def final_latents_and_maps():
        with mock.patch.object(segmenter, "_decode", wraps=segmenter._decode) as decode:
            differences = segmenter._difference_maps(latent, masks)
        return torch.cat([call.args[0] for call in decode.call_args_list]), differences

    with _conv_in_batches(segmenter.denoiser.unet) as batches:
        shared, shared_maps = final_latents_and_maps()
    runs, steps = 2 * num_masks, len(segmenter.denoiser.timesteps)
    chunks = [min(chunk_size, runs - first) for first in range(0, runs, chunk_size)]
    inversion = [min(chunk_size, steps - first) for first in range(0, steps, chunk_size)]
    # The inversion (= reference run) in chunks of steps, then per chunk of runs: the prefix once at
    # batch 1, then the chunk's full batch.
    assert batches == inversion + [b for chunk in chunks for b in [1] + [chunk] * (steps - 1)]
    with _full_batch(segmenter.denoiser):
        full, full_maps = final_latents_and_maps()
    assert shared.shape[0] == runs
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    # The maps are norms: near zero, a 1e-7 change in the images is a large relative one.
    torch.testing.assert_close(shared_maps, full_maps, rtol=1e-4, atol=1e-4 * float(full_maps.abs().amax()))


def _segment_and_maps(segmenter, image):
    """The segmentation, and the (K, R, R) difference maps its labels are the argmax of."""
    maps, difference_maps = [], segmenter._difference_maps

    def kept(*args):
        maps.append(difference_maps(*args))
        return maps[-1]

    with mock.patch.object(segmenter, "_difference_maps", side_effect=kept):
        result = segmenter.segment(image)
    return result, maps[0]


@torch.inference_mode()
def test_labels_change_only_at_near_ties_of_two_difference_maps(tiny_model, tiny_config, photos):
    segmenter = _segmenter(tiny_model, tiny_config)
    shared, shared_maps = _segment_and_maps(segmenter, photos["astronaut"])
    with _full_batch(segmenter.denoiser):
        full, full_maps = _segment_and_maps(segmenter, photos["astronaut"])
    assert len(np.unique(full.labels)) > 1
    # A batch-1 prefix rounds differently from a batch-of-runs one (fp32, ~1e-7), which can flip a
    # pixel whose two best maps are that close; any other pixel keeps its label.
    flipped = shared_maps.argmax(dim=0) != full_maps.argmax(dim=0)
    best, second = full_maps.topk(2, dim=0).values
    assert torch.all(best[flipped] - second[flipped] <= 1e-4 * float(best.amax()))
    assert flipped.float().mean() <= 1e-3
    assert np.mean(shared.labels != full.labels) <= 1e-3
    np.testing.assert_allclose(shared.score, full.score, atol=1e-3)  # scores lie in [0, 1]


@torch.inference_mode()
def test_a_single_run_and_the_inversion_take_the_unchanged_path(tiny_segmenter, photos):
    denoiser = tiny_segmenter.denoiser
    latent = _latent(tiny_segmenter, photos["coffee"])
    tokens = tiny_segmenter._modulation_side ** 2
    with mock.patch.object(denoiser.shared_prefix, "fanned_out", wraps=denoiser.shared_prefix.fanned_out) as fanned_out:
        start, noise_maps = _inverted(denoiser, latent)
        alone = denoiser.modulated_runs(start, noise_maps, torch.zeros(1, tokens))
    fanned_out.assert_not_called()
    torch.testing.assert_close(alone, latent, rtol=0, atol=1e-5)


def test_layouts_other_than_stable_diffusions_fall_back_to_the_full_batch(tiny_segmenter):
    unet = tiny_segmenter.denoiser.unet
    assert SharedPrefix.install(torch.nn.Sequential(), MODULATION_LAYER) is None
    # Layers not inside a block's Transformer2DModel get no shared prefix.
    assert SharedPrefix.install(unet, "some_block.attn1") is None
    assert SharedPrefix.install(unet, "up_blocks.1.resnets.0") is None
