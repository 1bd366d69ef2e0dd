"""The spec's "Properties every implementation must satisfy", on the fast path and the tiny random model.

Each property test is also run against a deliberately broken variant of the code (named in its
docstring) and must fail there: ``broken_variants.fails_when`` checks that, so no test here can
pass by accident.
"""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from broken_variants import fails_when

from emerdiff import EmerDiffSegmenter
from emerdiff.attention import AttentionState, EmerDiffAttnProcessor, split_heads
from emerdiff.config import FEATURE_LAYER, MODULATION_LAYER
from emerdiff.images import to_rgb
from emerdiff.inversion import DDPMInversion


def _segmenter(tiny_model, config):
    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")


def _latent(segmenter, image):
    return segmenter._encode([to_rgb(image)])


def _inverted(denoiser, latent, chunk=None):
    """(samples x_t, noise maps z_t) of one image; records the reference attention when injecting."""
    samples = denoiser.inversion.samples(latent, torch.Generator("cpu").manual_seed(denoiser.config.seed))
    return samples, denoiser.invert(latent, samples, chunk or len(samples))


def _quadrant_masks(segmenter):
    side = segmenter._modulation_side
    lowres = torch.zeros(side, side, dtype=torch.long)
    lowres[: side // 2, side // 2 :] = 1
    lowres[side // 2 :, : side // 2] = 2
    lowres[side // 2 :, side // 2 :] = 3
    return segmenter._token_masks(lowres, 4)


@contextlib.contextmanager
def _unet_inputs(unet):
    """The latent each UNet call receives, in call order."""
    inputs = []
    handle = unet.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(args[0].clone()), with_kwargs=True)
    try:
        yield inputs
    finally:
        handle.remove()


def _runs_started(mode=lambda mode: mode, modulation=lambda modulation: modulation):
    """A broken variant made by rewriting what every run is started with (mode, (runs, tokens, 1) modulation)."""
    start = AttentionState.start

    def rewritten(self, run_mode, run_modulation=None):
        start(self, mode(run_mode), None if run_modulation is None else modulation(run_modulation))

    return mock.patch.object(AttentionState, "start", rewritten)


def _without_injection():
    """Broken variant "injection removed": modulated runs use plain attention."""
    return _runs_started(mode=lambda mode: "plain" if mode == "inject" else mode)


def _modulated_one_step_late():
    """Broken variant "modulation at the wrong step": the modulation layer sees the step index one behind."""
    call = EmerDiffAttnProcessor.__call__

    def late(self, *args, **kwargs):
        if not (self.is_modulated and self.state.mode == "inject"):
            return call(self, *args, **kwargs)
        self.state.step -= 1
        try:
            return call(self, *args, **kwargs)
        finally:
            self.state.step += 1

    return mock.patch.object(EmerDiffAttnProcessor, "__call__", late)


def _modulated_at(segmenter, layer):
    """Broken variant "modulation at the wrong layer": ``layer`` is modulated instead of the configured one."""
    patches = []
    for name, processor in segmenter.denoiser.unet.attn_processors.items():
        patches.append(mock.patch.object(processor, "is_modulated", name == f"{layer}.processor"))
    return patches


# -- lambda = 0, sign swap, batching -------------------------------------------------------------


def _noise_maps_per_run():
    """Broken variant: each run of a chunk takes its own noise map instead of sharing the image's z_t."""

    def per_run(self, latents, noise_prediction, step, noise_maps):
        rows = (torch.arange(noise_prediction.shape[0]) + step) % len(noise_maps)
        return self._mean(latents, noise_prediction.float(), slice(step, step + 1)) + self._sigma[step : step + 1] * noise_maps[rows]

    return mock.patch.object(DDPMInversion, "step", per_run)


@torch.inference_mode()
def test_zero_strength_gives_identical_images_and_zero_differences(tiny_model, tiny_config, photos):
    """lambda = 0: I+ = I- for every mask and every d_i is 0.

    Broken variant caught: the runs of a chunk not sharing the image's noise maps z_t."""
    segmenter = _segmenter(tiny_model, tiny_config.replace(modulation_strength=0.0))
    latent = _latent(segmenter, photos["coffee"])
    masks = _quadrant_masks(segmenter)

    def check():
        with mock.patch.object(segmenter, "_decode", wraps=segmenter._decode) as decode:
            differences = segmenter._difference_maps(latent, masks)
        final_latents = torch.cat([call.args[0] for call in decode.call_args_list])
        assert len(final_latents) == 8
        assert torch.equal(final_latents[0::2], final_latents[1::2])
        assert torch.count_nonzero(differences) == 0

    check()
    fails_when([_noise_maps_per_run()], check)


def _sign_order_only_on_minus():
    """Broken variant: the modulation reaches only the -lambda run of each pair (the +lambda run gets none)."""
    even_rows = (torch.arange(64) % 2 == 0).float()[:, None, None]
    return _runs_started(modulation=lambda modulation: modulation * even_rows[: len(modulation)])


@torch.inference_mode()
def test_swapping_the_signs_gives_the_same_differences(tiny_model, tiny_config, photos):
    """Runs with +lambda first give the d_i of runs with -lambda first.

    Broken variant caught: the modulation applied to the -lambda run only (then swapping the
    signs changes which image is nudged, and d_i changes)."""
    plus = _segmenter(tiny_model, tiny_config)
    minus = _segmenter(tiny_model, tiny_config.replace(modulation_strength=-tiny_config.modulation_strength))
    latent = _latent(plus, photos["chelsea"])
    masks = _quadrant_masks(plus)

    def check():
        expected = plus._difference_maps(latent, masks)
        assert expected.abs().amax() > 0
        torch.testing.assert_close(minus._difference_maps(latent, masks), expected, rtol=1e-3,
                                   atol=1e-4 * float(expected.abs().amax()))

    check()
    fails_when([_sign_order_only_on_minus()], check)


def _first_pair_everywhere():
    """Broken variant: every pair of a chunk gets the chunk's first pair of modulations."""
    return _runs_started(modulation=lambda modulation: modulation[:2].repeat(len(modulation) // 2, 1, 1))


@torch.inference_mode()
def test_batched_and_one_pair_at_a_time_runs_agree(tiny_model, tiny_config, photos):
    """Broken variant caught: every pair of a chunk receiving the chunk's first pair of modulations."""
    one_pair = _segmenter(tiny_model, tiny_config.replace(chunk_size=2))
    all_at_once = _segmenter(tiny_model, tiny_config.replace(chunk_size=8))
    latent = _latent(one_pair, photos["astronaut"])
    masks = _quadrant_masks(one_pair)

    def check():
        separate = one_pair._difference_maps(latent, masks)
        together = all_at_once._difference_maps(latent, masks)
        assert separate.abs().amax() > 0
        # Different batch sizes take different GEMM paths: agreement to ~1e-4 of the maps' scale.
        torch.testing.assert_close(together, separate, rtol=1e-3, atol=1e-4 * float(separate.abs().amax()))

    check()
    fails_when([_first_pair_everywhere()], check)


# -- the trajectory --------------------------------------------------------------------------------


@pytest.mark.parametrize("injection", [True, False])
@torch.inference_mode()
def test_the_un_nudged_trajectory_passes_through_the_drawn_samples_and_ends_at_the_latent(
        tiny_model, tiny_config, photos, injection):
    """x_t at every step is the step-5 sample, and the end is z_0 (spec step 6).

    Broken variant caught: the step without the shared noise map (x_p = mu_t, a deterministic
    DDIM-like step)."""
    segmenter = _segmenter(tiny_model, tiny_config.replace(attention_injection=injection))
    denoiser = segmenter.denoiser
    latent = _latent(segmenter, photos["astronaut"])
    tokens = segmenter._modulation_side ** 2

    def check():
        samples, noise_maps = _inverted(denoiser, latent)
        with _unet_inputs(denoiser.unet) as inputs:
            final = denoiser.modulated_runs(samples[:1], noise_maps, torch.zeros(1, tokens))
        assert len(inputs) == len(denoiser.timesteps) == len(samples) == 15
        for step, seen in enumerate(inputs):
            torch.testing.assert_close(seen[0], samples[step], rtol=0, atol=1e-4, msg=f"step {step}")
        torch.testing.assert_close(final, latent, rtol=0, atol=1e-4)

    check()

    def without_noise_map(self, latents, noise_prediction, step, noise_maps):
        return self._mean(latents, noise_prediction.float(), slice(step, step + 1))

    fails_when([mock.patch.object(DDPMInversion, "step", without_noise_map)], check)


def test_the_grid_and_the_scheduler_flags_are_pinned(tiny_model, tiny_config):
    """The window is 281, 261, ..., 1 and the step before t = 1 uses alpha_bar_0 (set_alpha_to_one=False).

    Broken variant caught: ``set_alpha_to_one`` flipped (alpha_bar_p = 1 before the schedule)."""
    from diffusers import DDIMScheduler

    from emerdiff.inversion import SCHEDULER_FLAGS
    from emerdiff.tiny import scheduler_config

    assert SCHEDULER_FLAGS == {"set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False}
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, dim=0)

    def check():
        inversion = DDPMInversion(scheduler_config(), tiny_config)
        assert inversion.timesteps == list(range(281, 0, -20))
        expected_prev = [alphas[t - 20] if t > 20 else alphas[0] for t in inversion.timesteps]
        torch.testing.assert_close(inversion._sqrt_alpha_prev.flatten().double(), torch.stack(expected_prev).sqrt(),
                                   rtol=1e-6, atol=0)
        torch.testing.assert_close(inversion._sqrt_alpha.flatten().double(), alphas[inversion.timesteps].sqrt(),
                                   rtol=1e-6, atol=0)

    check()
    flipped = dict(SCHEDULER_FLAGS, set_alpha_to_one=True)
    fails_when([mock.patch("emerdiff.inversion.SCHEDULER_FLAGS", flipped)], check)
    # The model's own scheduler file carries the same flags (the tiny model is saved like SD's).
    saved = DDIMScheduler.load_config(str(tiny_model), subfolder="scheduler")
    assert (saved["set_alpha_to_one"], saved["steps_offset"], saved["timestep_spacing"]) == (False, 1, "leading")


# -- attention injection and the modulation ---------------------------------------------------------


@contextlib.contextmanager
def _layer_calls(unet, name):
    """(input hidden states, output) of every call of one attention layer."""
    calls = []
    handle = unet.get_submodule(name).register_forward_hook(
        lambda module, args, kwargs, output: calls.append((args[0].clone(), output.clone())), with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def _explicit_attention(attn, query_states, context, value_states):
    query = split_heads(attn.to_q(query_states), attn.heads)
    key = split_heads(attn.to_k(context), attn.heads)
    value = split_heads(attn.to_v(value_states), attn.heads)
    weights = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
    attended = weights @ value  # (batch, heads, tokens, head_dim)
    batch, heads, tokens, head_dim = attended.shape
    return attn.to_out[0](attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


@pytest.mark.parametrize("replay", ["query_key", "probabilities"])
@torch.inference_mode()
def test_modulated_runs_use_the_reference_query_and_key_in_every_attention_layer(tiny_model, tiny_config, photos, replay):
    """At a step after the modulation, a self-attention layer's output is softmax(q_ref k_ref^T) v_run and
    a cross-attention layer's is the reference's, with q_ref, k_ref from the inversion pass at that step.

    Broken variant caught: injection removed (the runs attend with their own queries and keys)."""
    segmenter = _segmenter(tiny_model, tiny_config.replace(attention_replay=replay))
    denoiser, unet = segmenter.denoiser, segmenter.denoiser.unet
    latent = _latent(segmenter, photos["astronaut"])
    modulations = 10.0 * torch.cat([_quadrant_masks(segmenter)[:2], -_quadrant_masks(segmenter)[:2]])
    self_layer = "up_blocks.3.attentions.0.transformer_blocks.0.attn1"
    cross_layer = "up_blocks.3.attentions.0.transformer_blocks.0.attn2"
    step = 2

    def check():
        with _layer_calls(unet, self_layer) as self_calls, _layer_calls(unet, cross_layer) as cross_calls:
            samples, noise_maps = _inverted(denoiser, latent)
            reference_self = self_calls[0][0][step : step + 1]  # the inversion pass: one row per step
            reference_cross_input, reference_cross = (tensor[step : step + 1] for tensor in cross_calls[0])
            del self_calls[:], cross_calls[:]
            denoiser.modulated_runs(samples[:1], noise_maps, modulations)
        run_states, run_output = self_calls[step]
        assert run_states.shape[0] == len(modulations)
        # The runs have moved away from the reference: their own queries and keys would differ.
        assert (run_states - reference_self).abs().amax() > 1e-3
        assert (cross_calls[step][0] - reference_cross_input).abs().amax() > 1e-3
        references = reference_self.expand_as(run_states)
        expected = _explicit_attention(unet.get_submodule(self_layer), references, references, run_states)
        torch.testing.assert_close(run_output, expected, rtol=1e-4, atol=1e-5)
        # Cross-attention: q_ref with the prompt's keys and values is the reference's output.
        prompt = denoiser.prompt_embedding
        expected_cross = _explicit_attention(unet.get_submodule(cross_layer), reference_cross_input, prompt, prompt)
        torch.testing.assert_close(reference_cross, expected_cross, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cross_calls[step][1], expected_cross.expand_as(cross_calls[step][1]), rtol=1e-4, atol=1e-5)

    check()
    fails_when([_without_injection()], check)


@torch.inference_mode()
def test_a_one_cell_mask_changes_the_layer_output_only_at_that_token_and_step(tiny_model, tiny_config, photos):
    """+c at one token of the modulation layer's output at t_m, nothing anywhere else (spec step 8).

    Broken variants caught: the modulation at the wrong step, and at the wrong layer (the feature layer)."""
    segmenter = _segmenter(tiny_model, tiny_config)
    denoiser = segmenter.denoiser
    latent = _latent(segmenter, photos["coffee"])
    tokens = segmenter._modulation_side ** 2
    cell = 5
    modulation = torch.zeros(1, tokens)
    modulation[0, cell] = 10.0

    def check():
        with _layer_calls(denoiser.unet, MODULATION_LAYER) as calls:
            samples, noise_maps = _inverted(denoiser, latent)
            reference = calls[0][1]  # (steps, tokens, channels): the inversion pass, one row per step
            del calls[:]
            denoiser.modulated_runs(samples[:1], noise_maps, modulation)
        outputs = [output for _, output in calls]
        assert len(outputs) == len(denoiser.timesteps)
        for step, modulated in enumerate(outputs):
            changed = (modulated[0] - reference[step]).abs().amax(dim=-1)  # (tokens,)
            if step == 0:
                assert torch.nonzero(changed > 1e-4).flatten().tolist() == [cell]
                torch.testing.assert_close(modulated[0, cell] - reference[0, cell], torch.full_like(reference[0, cell], 10.0),
                                           rtol=0, atol=1e-4)
            else:
                assert torch.count_nonzero(changed > 1e-4) == 0, f"step {step} changed tokens {torch.nonzero(changed).flatten().tolist()}"

    check()
    fails_when([_modulated_one_step_late()], check)
    fails_when(_modulated_at(segmenter, FEATURE_LAYER), check)


# -- features ---------------------------------------------------------------------------------------


@torch.inference_mode()
def test_batched_feature_passes_give_the_mean_of_sequential_ones(tiny_model, tiny_config, photos):
    """The features are the mean of N passes, each with its own draw, in the order of one CPU generator.

    Computed independently here: N whole UNet passes with stock attention, to_q of the feature
    layer captured by a hook. Broken variant caught: every pass given the same draw."""
    config = tiny_config.replace(feature_samples=5)
    segmenter = _segmenter(tiny_model, config.replace(chunk_size=4))  # 5 draws x 2 images in chunks of 4
    denoiser, unet = segmenter.denoiser, segmenter.denoiser.unet
    latents = segmenter._encode([to_rgb(photos["coffee"]), to_rgb(photos["chelsea"])])
    from diffusers import DDIMScheduler

    alpha_bar = float(DDIMScheduler.from_config(segmenter._parts.scheduler_config).alphas_cumprod[config.feature_timestep])
    captured = []
    handle = unet.get_submodule(FEATURE_LAYER).to_q.register_forward_hook(lambda m, args, output: captured.append(output))
    try:
        expected = []
        for image in range(2):
            generator = torch.Generator("cpu").manual_seed(config.seed)
            passes = []
            for _ in range(config.feature_samples):
                noise = torch.randn(latents.shape[1:], generator=generator)
                noisy = alpha_bar**0.5 * latents[image] + (1 - alpha_bar) ** 0.5 * noise
                denoiser.state.start("plain")
                unet(noisy[None], config.feature_timestep, encoder_hidden_states=denoiser.prompt_embedding)
                passes.append(captured.pop()[0])
            expected.append(torch.stack(passes).mean(dim=0))
    finally:
        handle.remove()
    expected = torch.stack(expected)

    def check():
        torch.testing.assert_close(segmenter._features(latents), expected, rtol=1e-4, atol=1e-5)

    check()
    same_draw = torch.Generator("cpu").manual_seed(config.seed)
    one_noise = torch.randn(latents.shape[1:], generator=same_draw)
    fails_when([mock.patch("torch.randn", lambda *args, **kwargs: one_noise.clone())], check)


# -- errors and output contract ---------------------------------------------------------------------


def test_unknown_layer_names_are_errors_that_list_the_valid_ones(tiny_model, tiny_config):
    with pytest.raises(ValueError, match=r"(?s)feature_layer='up_blocks.9.attn2' is not an attention layer.*up_blocks.1.attentions.0"):
        _segmenter(tiny_model, tiny_config.replace(feature_layer="up_blocks.9.attn2"))
    with pytest.raises(ValueError, match=r"modulation_layer='nope'"):
        _segmenter(tiny_model, tiny_config.replace(modulation_layer="nope"))


def test_a_model_without_the_default_layer_is_a_clear_error(tmp_path, tiny_config):
    """SD's layout has three cross-attentions in each up block; a model with one layer per block has two."""
    from emerdiff.tiny import TINY_SIZES, save_model

    sizes = {**TINY_SIZES, "unet": {**TINY_SIZES["unet"], "layers_per_block": 1}}
    folder = save_model(tmp_path / "shallow", sizes)
    with pytest.raises(ValueError, match=r"(?s)modulation_layer='up_blocks.1.attentions.2.transformer_blocks.0.attn2' "
                                         r"is not an attention layer.*up_blocks.1.attentions.1.transformer_blocks.0.attn2"):
        _segmenter(folder, tiny_config)


def test_a_modulation_timestep_off_the_grid_is_an_error(tiny_model, tiny_config):
    with pytest.raises(ValueError, match=r"modulation_timestep=280 is not on the 50-step grid; the nearest grid timesteps are \[261, 281\]"):
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


def test_a_batch_gives_what_each_image_gives_alone(tiny_model, tiny_config, photos):
    # A chunk that divides the N = 100 feature draws: every UNet batch of the two images holds the
    # rows it holds for one image alone, so the same kernels see the same inputs, on any CPU. (Other
    # chunks put two images' draws in one batch, whose kernels may round differently:
    # test_batched_feature_passes_give_the_mean_of_sequential_ones compares those within rounding.)
    segmenter = _segmenter(tiny_model, tiny_config.replace(chunk_size=4))
    images = [photos["astronaut"], photos["coffee"]]
    batched = segmenter.segment_batch(images)
    for image, result in zip(images, batched):
        alone = segmenter.segment(image)
        assert np.array_equal(result.lowres_labels, alone.lowres_labels)
        assert np.array_equal(result.labels, alone.labels)


def test_auto_replay_keeps_probabilities_only_where_they_are_small(tiny_model, tiny_config):
    from emerdiff.planning import attention_shapes, probability_layers

    layers = attention_shapes(_segmenter(tiny_model, tiny_config).denoiser.unet, 128)
    # Tiny UNet (2 heads) at 128 px, 16x16 latent. Probabilities take heads * N^2 values, query and
    # key 2 * N * channels: at 8x8 tokens (N = 64, 32 channels) 2 * 64 > 2 * 32, too big; at 4x4
    # (N = 16, 64 channels) 2 * 16 <= 2 * 64 and at 2x2 (N = 4) likewise, so those keep probabilities.
    chosen = probability_layers(layers, 15, "auto", budget_bytes=0, element_bytes=4)
    assert chosen == {
        "down_blocks.2.attentions.0.transformer_blocks.0.attn1",
        "down_blocks.2.attentions.1.transformer_blocks.0.attn1",
        "mid_block.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn1",
    }
    assert len(probability_layers(layers, 15, "auto", budget_bytes=10**12, element_bytes=4)) == 16
    assert probability_layers(layers, 15, "query_key", budget_bytes=10**12, element_bytes=4) == frozenset()
