"""The spec's "Properties every implementation must satisfy", on the tiny random model."""

import numpy as np
import pytest
import torch

from emerdiff import EmerDiffSegmenter
from emerdiff.images import resize_labels, to_rgb
from emerdiff.maps import gaussian_blur
from emerdiff.reference import ReferenceEmerDiff


def _segmenter(tiny_model, config):
    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")


def _start(segmenter, image):
    latents, noise = segmenter._encode([to_rgb(image)])
    return segmenter.denoiser.noised(latents, noise, segmenter.config.modulation_timestep)


def _quadrant_masks(segmenter):
    side = segmenter._modulation_side
    lowres = torch.zeros(side, side, dtype=torch.long)
    lowres[: side // 2, side // 2 :] = 1
    lowres[side // 2 :, : side // 2] = 2
    lowres[side // 2 :, side // 2 :] = 3
    return lowres, segmenter._token_masks(lowres, 4)


@torch.inference_mode()
def test_zero_strength_gives_identical_images_and_zero_differences(tiny_model, tiny_config, photos):
    segmenter = _segmenter(tiny_model, tiny_config.replace(modulation_strength=0.0))
    start = _start(segmenter, photos["coffee"])
    _, masks = _quadrant_masks(segmenter)
    assert torch.count_nonzero(segmenter._difference_maps(start, masks)) == 0


@pytest.mark.parametrize("replay", ["query_key", "probabilities"])
@torch.inference_mode()
def test_injecting_the_reference_attention_reproduces_the_reference_latents(tiny_model, tiny_config, photos, replay):
    segmenter = _segmenter(tiny_model, tiny_config.replace(attention_replay=replay))
    denoiser = segmenter.denoiser
    assert len(denoiser.state.probability_layers) == (0 if replay == "query_key" else 10)
    start = _start(segmenter, photos["astronaut"])
    tokens = segmenter._modulation_side ** 2
    reference = denoiser.reference_run(start)
    alone = denoiser.modulated_runs(start, torch.zeros(1, tokens))
    assert torch.equal(alone, reference)
    batched = denoiser.modulated_runs(start, torch.zeros(4, tokens))
    torch.testing.assert_close(batched, reference.expand(4, -1, -1, -1), rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_swapping_signs_gives_the_same_differences(tiny_model, tiny_config, photos):
    plus = _segmenter(tiny_model, tiny_config)
    minus = _segmenter(tiny_model, tiny_config.replace(modulation_strength=-tiny_config.modulation_strength))
    start = _start(plus, photos["chelsea"])
    _, masks = _quadrant_masks(plus)
    torch.testing.assert_close(plus._difference_maps(start, masks), minus._difference_maps(start, masks), rtol=1e-4, atol=1e-6)


@torch.inference_mode()
def test_batched_and_one_pair_at_a_time_runs_agree(tiny_model, tiny_config, photos):
    one_pair = _segmenter(tiny_model, tiny_config.replace(chunk_size=2))
    all_at_once = _segmenter(tiny_model, tiny_config.replace(chunk_size=8))
    start = _start(one_pair, photos["astronaut"])
    _, masks = _quadrant_masks(one_pair)
    separate = one_pair._difference_maps(start, masks)
    together = all_at_once._difference_maps(start, masks)
    assert separate.abs().amax() > 0
    # Different batch sizes take different GEMM paths: agreement to ~1e-4 of the maps' scale.
    torch.testing.assert_close(together, separate, rtol=1e-3, atol=1e-4 * float(separate.abs().amax()))


@torch.inference_mode()
def test_a_one_cell_mask_changes_the_layer_output_only_at_that_token_and_step(tiny_segmenter, photos):
    denoiser = tiny_segmenter.denoiser
    layer = denoiser.unet.get_submodule(tiny_segmenter.config.modulation_layer)
    outputs = []
    handle = layer.register_forward_hook(lambda module, args, output: outputs.append(output.clone()))
    start = _start(tiny_segmenter, photos["coffee"])
    tokens = tiny_segmenter._modulation_side ** 2
    cell = 5
    modulation = torch.zeros(1, tokens)
    modulation[0, cell] = 10.0
    try:
        denoiser.reference_run(start)
        reference_outputs, outputs[:] = list(outputs), []
        denoiser.modulated_runs(start, modulation)
    finally:
        handle.remove()
    assert len(outputs) == len(reference_outputs) == len(denoiser.timesteps)
    for step, (modulated, reference) in enumerate(zip(outputs, reference_outputs)):
        changed = (modulated - reference).abs().amax(dim=-1)[0]  # (tokens,)
        if step == 0:
            assert torch.nonzero(changed).flatten().tolist() == [cell]
            torch.testing.assert_close(modulated[0, cell] - reference[0, cell], torch.full_like(reference[0, cell], 10.0))
        else:
            assert torch.count_nonzero(changed) == 0, f"step {step} changed tokens {torch.nonzero(changed).flatten().tolist()}"


def test_unknown_layer_names_are_errors_that_list_the_valid_ones(tiny_model, tiny_config):
    with pytest.raises(ValueError, match=r"(?s)feature_layer='up_blocks.9.attn2' is not an attention layer.*up_blocks.1.attentions.0"):
        _segmenter(tiny_model, tiny_config.replace(feature_layer="up_blocks.9.attn2"))
    with pytest.raises(ValueError, match=r"modulation_layer='nope'"):
        _segmenter(tiny_model, tiny_config.replace(modulation_layer="nope"))


def test_a_modulation_timestep_off_the_sampler_grid_is_an_error(tiny_model, tiny_config):
    with pytest.raises(ValueError, match=r"modulation_timestep=280 is not on the 50-step DDIM grid; the nearest grid timesteps are \[261, 281\]"):
        _segmenter(tiny_model, tiny_config.replace(modulation_timestep=280))


def test_labels_cover_the_image_with_valid_ids_and_repeat_for_a_seed(tiny_segmenter, photos):
    image = photos["astronaut"][:300, :200]
    first = tiny_segmenter.segment(image)
    again = tiny_segmenter.segment(image)
    assert first.labels.shape == (300, 200)
    assert first.labels.min() >= 0 and first.labels.max() < tiny_segmenter.config.num_masks
    assert first.lowres_labels.shape == (4, 4)
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.lowres_labels, again.lowres_labels)
    assert first.area.sum() == 300 * 200
    assert first.num_segments == len(np.unique(first.labels))


def test_a_batch_gives_what_each_image_gives_alone(tiny_segmenter, photos):
    images = [photos["astronaut"], photos["coffee"]]
    batched = tiny_segmenter.segment_batch(images)
    for image, result in zip(images, batched):
        alone = tiny_segmenter.segment(image)
        assert np.array_equal(result.lowres_labels, alone.lowres_labels)
        assert (result.labels == alone.labels).mean() > 0.999


@pytest.mark.parametrize("replay", ["query_key", "probabilities"])
def test_upsample_matches_the_slow_reference(tiny_model, tiny_config, photos, replay):
    """Same low-res labels, seed and model: the fast path and the per-mask reference agree.

    Both are fp32 but sum in different orders, so their difference maps differ by ~1e-5; a pixel
    may flip only where the reference's best two blurred maps are closer than that.
    """
    tiny_segmenter = _segmenter(tiny_model, tiny_config.replace(attention_replay=replay))
    image = photos["astronaut"]
    lowres = tiny_segmenter.segment(image).lowres_labels
    fast = tiny_segmenter.upsample(image, lowres)
    reference = ReferenceEmerDiff.from_segmenter(tiny_segmenter)
    reference_labels = reference.upsample(image, lowres)

    reference_maps = gaussian_blur(reference.difference_maps(image, lowres), 5, 3.0)
    with torch.inference_mode():
        masks = tiny_segmenter._token_masks(torch.from_numpy(lowres.astype(np.int64)), int(lowres.max()) + 1)
        fast_maps = gaussian_blur(tiny_segmenter._difference_maps(_start(tiny_segmenter, image), masks), 5, 3.0)
    discrepancy = float((fast_maps - reference_maps).abs().amax())
    assert discrepancy < 1e-3 * float(reference_maps.amax())
    top_two = reference_maps.topk(2, dim=0).values
    decided = resize_labels((top_two[0] - top_two[1] > 2 * discrepancy).numpy(), *reference_labels.shape)
    assert decided.mean() > 0.99
    assert np.array_equal(fast.labels[decided], reference_labels[decided])
    assert (fast.labels == reference_labels).mean() >= 0.999


def test_auto_replay_keeps_probabilities_only_where_they_are_small(tiny_model, tiny_config):
    from emerdiff.attention import probability_layers

    unet = _segmenter(tiny_model, tiny_config).denoiser.unet
    # Tiny UNet (2 heads) at 128 px, 16x16 latent. Probabilities take heads * N^2 values, query and
    # key 2 * N * channels: at 8x8 tokens (N = 64, 32 channels) 2 * 64 > 2 * 32, too big; at 4x4
    # (N = 16, 64 channels) 2 * 16 <= 2 * 64 and at 2x2 (N = 4) likewise, so those keep probabilities.
    chosen = probability_layers(unet, 128, 15, "auto", budget_bytes=0, element_bytes=4)
    assert chosen == {
        "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
    }
    assert len(probability_layers(unet, 128, 15, "auto", budget_bytes=10**12, element_bytes=4)) == 10
    assert probability_layers(unet, 128, 15, "query_key", budget_bytes=10**12, element_bytes=4) == frozenset()
