"""The slow reference (emerdiff/reference.py) against the spec's properties, on the tiny model.

Every test names the deliberately broken variant of the reference it catches, and checks that it
does: the same assertion, run against that variant, must fail (``_catches``). A test that cannot
fail would make the reference's agreement with the production path mean nothing.
"""

import dataclasses
import types

import numpy as np
import pytest
import torch
from PIL import Image

import emerdiff.reference as reference_module
from emerdiff.loading import load_parts
from emerdiff.reference import ReferenceEmerDiff

SPEC_WINDOW = [281, 261, 241, 221, 201, 181, 161, 141, 121, 101, 81, 61, 41, 21, 1]
SHORT_WINDOW = 41  # t_m for the tests whose property does not depend on the window's length: 3 steps, not 15

# Two masks on the tiny model's 4x4 modulation grid at 128 px; not symmetric under a transpose.
LOWRES = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])


def _catches(check, *args) -> None:
    """``check(*args)`` fails: the deliberately broken variant now in place is caught."""
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        check(*args)


@pytest.fixture(scope="module")
def parts(tiny_model):
    return load_parts(str(tiny_model), torch.float32)


@pytest.fixture(scope="module")
def spec_config(tiny_config):
    # The spec's grid and window whatever the shared fixture says; small feature and k-means work.
    return tiny_config.replace(
        resolution=128, num_inference_steps=50, modulation_timestep=281, num_masks=2, feature_samples=2,
        kmeans_restarts=2, kmeans_iterations=20,
    )


@pytest.fixture(scope="module")
def config(spec_config):
    return spec_config.replace(modulation_timestep=SHORT_WINDOW)


@pytest.fixture(scope="module")
def reference(parts, config):
    return ReferenceEmerDiff.from_parts(parts, config)


@pytest.fixture(scope="module")
def image(photos):
    return photos["astronaut"]


@pytest.fixture(scope="module")
def plus_maps(reference, image):
    return reference.difference_maps(image, LOWRES)


@pytest.fixture(scope="module")
def spec_window_reference(parts, spec_config):
    return ReferenceEmerDiff.from_parts(parts, spec_config)


@pytest.fixture(scope="module")
def spec_window_inversion(spec_window_reference, image):
    return spec_window_reference.inversion(image)


# -- 1. the grid and the schedule -------------------------------------------------------------


def _assert_stable_diffusion_scheduler(scheduler_config: dict) -> None:
    assert scheduler_config["set_alpha_to_one"] is False
    assert scheduler_config["steps_offset"] == 1
    assert scheduler_config["timestep_spacing"] == "leading"
    assert scheduler_config["beta_schedule"] == "scaled_linear"
    assert (scheduler_config["beta_start"], scheduler_config["beta_end"]) == (0.00085, 0.012)
    assert scheduler_config["num_train_timesteps"] == 1000


def _assert_grid_and_alphas(reference: ReferenceEmerDiff, scheduler_config: dict) -> None:
    from diffusers import DDIMScheduler  # only here, as an independent check of the reference's own ᾱ

    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(50)
    assert reference.timesteps() == SPEC_WINDOW
    assert reference.timesteps() == [int(t) for t in scheduler.timesteps if t <= 281]
    assert torch.equal(reference.alphas_cumprod, scheduler.alphas_cumprod)
    # The predecessor of t = 1 is t = -19: the scheduler's final_alpha_cumprod, ᾱ_0.
    assert reference.alpha_bar(1 - 20) == float(scheduler.final_alpha_cumprod) == float(scheduler.alphas_cumprod[0])


def test_window_alphas_and_scheduler_flags_are_stable_diffusions(parts, spec_config, spec_window_reference, monkeypatch):
    """The window is 281, 261, …, 1 and ᾱ is the DDIM scheduler's, with set_alpha_to_one=False.

    Broken variants caught: a scheduler config with set_alpha_to_one=True; ᾱ from linear betas
    (the square root and square forgotten); a grid that ignores steps_offset (280, …, 0); ᾱ_p = 1
    for p < 0 (what set_alpha_to_one=True would give).
    """
    reference = spec_window_reference
    _assert_stable_diffusion_scheduler(parts.scheduler_config)
    _assert_grid_and_alphas(reference, parts.scheduler_config)

    _catches(_assert_stable_diffusion_scheduler, {**parts.scheduler_config, "set_alpha_to_one": True})
    original_alphas = reference_module._alphas_cumprod

    def linear_betas(config):
        return original_alphas({**config, "beta_schedule": "linear"})

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_alphas_cumprod", linear_betas)
        _catches(_assert_grid_and_alphas, ReferenceEmerDiff.from_parts(parts, spec_config), parts.scheduler_config)
    original_grid = reference_module._timestep_grid
    with monkeypatch.context() as patch:
        # t_m = 280 so that the shifted grid still holds it and the window itself is compared.
        patch.setattr(reference_module, "_timestep_grid", lambda config, steps: [t - 1 for t in original_grid(config, steps)])
        shifted = ReferenceEmerDiff.from_parts(parts, spec_config.replace(modulation_timestep=280))
        _catches(_assert_grid_and_alphas, shifted, parts.scheduler_config)
    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_alpha_bar", _alpha_bar_one_before_zero)
        _catches(_assert_grid_and_alphas, reference, parts.scheduler_config)


def _alpha_bar_one_before_zero(alphas_cumprod, timestep):
    return 1.0 if timestep < 0 else float(alphas_cumprod[timestep])


# -- 2. properties ----------------------------------------------------------------------------


def _assert_reconstructs(reference: ReferenceEmerDiff, inversion, injection: bool) -> None:
    visited = reference.trajectory(inversion, injection=injection)
    window = reference.timesteps()
    assert len(visited) == len(window) + 1
    # fp32 rounding over 15 steps: observed ~1e-6 on latents of magnitude ~0.2.
    for t, latent in zip(window, visited):
        torch.testing.assert_close(latent, inversion.samples[t], rtol=1e-4, atol=1e-5, msg=f"x_{t}")
    torch.testing.assert_close(visited[-1], inversion.latent, rtol=1e-4, atol=1e-5, msg="z0")


def _shifted_by_one_step(inversion, window):
    # q and k of step t replayed at the step before it (t + 20), as an off-by-one would.
    recorded = dict(inversion.recorded)
    for (layer, t), value in inversion.recorded.items():
        if t + 20 in window:
            recorded[(layer, t + 20)] = value
    return dataclasses.replace(inversion, recorded=recorded)


def test_alphas_are_computed_on_the_cpu_whatever_the_default_device(parts):
    """The GPU check builds models under ``with torch.device("cuda")``; CUDA's cumprod rounds otherwise."""
    from diffusers import DDIMScheduler

    with torch.device("meta"):  # stands in for "cuda": any default device other than the CPU
        alphas = reference_module._alphas_cumprod(parts.scheduler_config)
    assert alphas.device.type == "cpu"
    assert torch.equal(alphas, DDIMScheduler.from_config(parts.scheduler_config).alphas_cumprod)


def test_injected_unnudged_trajectory_reproduces_the_drawn_samples_and_ends_at_z0(
    spec_window_reference, spec_window_inversion
):
    """Step 6 with q and k injected: from x_281 the un-nudged trajectory passes through every drawn x_t
    and ends at z₀.

    Broken variant caught: q and k replayed from the neighbouring step.
    """
    reference, inversion = spec_window_reference, spec_window_inversion
    assert reference.timesteps() == SPEC_WINDOW
    _assert_reconstructs(reference, inversion, injection=True)

    _catches(_assert_reconstructs, reference, _shifted_by_one_step(inversion, reference.timesteps()), True)


def test_plain_unnudged_trajectory_reproduces_the_drawn_samples_and_ends_at_z0(
    spec_window_reference, spec_window_inversion, image, monkeypatch
):
    """Step 6 with plain attention: the same reconstruction.

    Broken variant caught: ᾱ_p = 1 for p < 0, set_alpha_to_one=True-style (σ_1 = 0, so the last
    noise map divides by zero).
    """
    reference = spec_window_reference
    _assert_reconstructs(reference, spec_window_inversion, injection=False)

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_alpha_bar", _alpha_bar_one_before_zero)
        _catches(_assert_reconstructs, reference, reference.inversion(image), False)


def _assert_zero(maps: torch.Tensor) -> None:
    assert maps.shape == (2, 128, 128)
    assert torch.count_nonzero(maps) == 0, f"largest d_i: {float(maps.abs().max())}"


def test_zero_strength_gives_zero_difference_maps(parts, config, image, monkeypatch):
    """λ = 0 ⇒ I⁻ = I⁺ and every d_i is exactly 0 (one process, same inputs, same operations).

    Broken variant caught: a trajectory that leaves its end latent in x_{t_m} (state leaking from
    the −λ run into the +λ run, as an in-place update would).
    """
    reference = ReferenceEmerDiff.from_parts(parts, config.replace(modulation_strength=0.0))
    _assert_zero(reference.difference_maps(image, LOWRES))

    original = ReferenceEmerDiff.trajectory

    def leaky(self, inversion, modulation=None, injection=None):
        visited = original(self, inversion, modulation, injection)
        visited[0].copy_(visited[-1])  # visited[0] is x_{t_m} itself
        return visited

    with monkeypatch.context() as patch:
        patch.setattr(ReferenceEmerDiff, "trajectory", leaky)
        _catches(lambda: _assert_zero(reference.difference_maps(image, LOWRES)))


def _assert_same_maps(first: torch.Tensor, second: torch.Tensor) -> None:
    assert float(first.amax()) > 0
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)


def test_swapping_the_signs_gives_the_same_difference_maps(parts, config, image, plus_maps, monkeypatch):
    """Running with modulation_strength = −λ (so +λ first, then −λ) gives the +λ run's d_i.

    Broken variant caught: a pair whose second run is left un-nudged, (−λ, 0) instead of (−λ, +λ).
    """
    minus = ReferenceEmerDiff.from_parts(parts, config.replace(modulation_strength=-config.modulation_strength))
    _assert_same_maps(plus_maps, minus.difference_maps(image, LOWRES))

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_signs", lambda strength: (-strength, 0.0))
        reference = ReferenceEmerDiff.from_parts(parts, config)
        _catches(_assert_same_maps, reference.difference_maps(image, LOWRES), minus.difference_maps(image, LOWRES))


def _output(reference: ReferenceEmerDiff, image) -> tuple[np.ndarray, torch.Tensor]:
    # The features as well as the labels: two masks can come out alike from different draws.
    return reference.segment(image), reference.features(image)


def _assert_same_output(first, second) -> None:
    np.testing.assert_array_equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_same_seed_gives_the_same_output(parts, config, reference, image, monkeypatch):
    """Two references built alike give bit-identical labels and features: every draw is seeded afresh.

    Broken variant caught: one generator seeded once and drawn from across calls.
    """
    again = ReferenceEmerDiff.from_parts(parts, config)
    _assert_same_output(_output(reference, image), _output(again, image))

    shared = torch.Generator("cpu").manual_seed(config.seed)
    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_generator", lambda seed: shared)
        _catches(_assert_same_output, _output(reference, image), _output(again, image))


def _assert_labels_at_image_size(labels: np.ndarray, height: int, width: int, num_masks: int) -> None:
    assert labels.shape == (height, width)
    assert np.issubdtype(labels.dtype, np.integer)
    assert set(np.unique(labels)) <= set(range(num_masks))


def test_labels_are_mask_ids_at_the_image_size(parts, config, photos, monkeypatch):
    """segment() on a non-square image: ids in 0..K−1, shape (H, W) of the input.

    Broken variant caught: labels left at the working resolution (no resize back).
    """
    reference = ReferenceEmerDiff.from_parts(parts, config.replace(num_masks=3))
    picture = photos["coffee"]  # 400 x 600
    height, width = picture.shape[:2]
    _assert_labels_at_image_size(reference.segment(picture), height, width, 3)

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_resize_labels", lambda labels, height, width: labels)
        _catches(_assert_labels_at_image_size, reference.segment(picture), height, width, 3)


# -- conventions and construction -------------------------------------------------------------


def _assert_matches_pil_nearest(resize) -> None:
    labels = np.arange(7 * 5).reshape(7, 5)
    for height, width in [(3, 2), (7, 5), (16, 11), (29, 40)]:
        expected = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((width, height), Image.NEAREST))
        np.testing.assert_array_equal(resize(labels, height, width), expected)


def test_label_resize_samples_pixel_centres_like_pil_nearest():
    """Labels are resampled at pixel centres, floor((i + 0.5)·S/H), as PIL's NEAREST does.

    Broken variant caught: corner sampling, floor(i·S/H).
    """
    _assert_matches_pil_nearest(reference_module._resize_labels)

    def corners(labels, height, width):
        rows = np.arange(height) * labels.shape[0] // height
        columns = np.arange(width) * labels.shape[1] // width
        return labels[rows[:, None], columns[None, :]]

    _catches(_assert_matches_pil_nearest, corners)


def _assert_explicit_attention_is_diffusers(reference: ReferenceEmerDiff, stock_unet) -> None:
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = reference.unet(latent, 81, encoder_hidden_states=reference.prompt).sample
        theirs = stock_unet(latent, 81, encoder_hidden_states=reference.prompt).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_explicit_attention_equals_diffusers_attention(parts, reference, monkeypatch):
    """Outside injection, the written-out softmax(q kᵀ/√d) v gives the stock UNet's output.

    Broken variant caught: the softmax taken over the queries instead of the keys.
    """
    _assert_explicit_attention_is_diffusers(reference, parts.unet)

    def wrong_axis(query, key, value):
        return torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-2) @ value

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_attend", wrong_axis)
        _catches(_assert_explicit_attention_is_diffusers, reference, parts.unet)


def _modulation_layer_outputs(reference: ReferenceEmerDiff, image, lowres) -> list[torch.Tensor]:
    outputs = []
    layer = reference.unet.get_submodule(reference.config.modulation_layer)
    handle = layer.register_forward_hook(lambda module, args, output: outputs.append(output.clone()))
    try:
        reference.difference_maps(image, lowres)
    finally:
        handle.remove()
    return outputs


def _assert_one_token_moves(outputs: list[torch.Tensor], steps: int, strength: float) -> None:
    # Calls: the inversion's `steps`, then mask 0 (−λ, +λ), then mask 1 (−λ, +λ); each run starts at t_m.
    unnudged, cell_minus = outputs[0], outputs[steps + 2 * steps]
    change = (cell_minus - unnudged)[0]  # (tokens, width)
    moved = change.abs().amax(dim=-1).nonzero().flatten().tolist()
    assert moved == [1], f"tokens changed: {moved}"
    torch.testing.assert_close(change[1], torch.full_like(change[1], -strength))


def test_a_one_cell_mask_moves_only_its_token_at_t_m(reference, image, monkeypatch):
    """Mask 1 = cell (row 0, column 1): at t_m its −λ run's modulation-layer output differs from the
    reference run's by exactly −λ at token 1 (row-major), nowhere else.

    Broken variant caught: the mask flattened column-major (it would move token 4).
    """
    lowres = np.zeros((4, 4), dtype=np.int64)
    lowres[0, 1] = 1
    steps, strength = len(reference.timesteps()), reference.config.modulation_strength
    _assert_one_token_moves(_modulation_layer_outputs(reference, image, lowres), steps, strength)

    original = reference_module._token_mask
    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "_token_mask", lambda grid, mask_id: original(grid.T, mask_id))
        _catches(_assert_one_token_moves, _modulation_layer_outputs(reference, image, lowres), steps, strength)


def _assert_unknown_layers_rejected(parts, config) -> None:
    missing = "up_blocks.1.attentions.7.transformer_blocks.0.attn2"
    for field in ("feature_layer", "modulation_layer"):
        with pytest.raises(ValueError, match="not an attention layer") as error:
            ReferenceEmerDiff.from_parts(parts, config.replace(**{field: missing}))
        assert field in str(error.value) and missing in str(error.value)
        assert "up_blocks.1.attentions.2.transformer_blocks.0.attn2" in str(error.value)  # the valid ones are listed


def test_a_layer_that_does_not_exist_is_a_clear_error(parts, config, monkeypatch):
    """A misspelled feature or modulation layer raises a ValueError that lists the valid layers.

    Broken variant caught: no layer check (the modulation would silently never apply).
    """
    _assert_unknown_layers_rejected(parts, config)

    with monkeypatch.context() as patch:
        # Without the check, construction succeeds and the misspelled layers are simply never matched.
        patch.setattr(reference_module, "_check_config", lambda *args: None)
        _catches(_assert_unknown_layers_rejected, parts, config)


def _assert_caller_untouched(reference: ReferenceEmerDiff, parts, processors_before: dict) -> None:
    assert {name: type(p) for name, p in parts.unet.attn_processors.items()} == processors_before
    assert reference.unet is not parts.unet


def test_from_parts_leaves_the_callers_model_untouched(tiny_model, config, monkeypatch):
    """from_parts installs its attention processors on its own copy of the UNet only.

    Broken variant caught: from_parts without the deep copy.
    """
    parts = load_parts(str(tiny_model), torch.float32)
    before = {name: type(p) for name, p in parts.unet.attn_processors.items()}
    _assert_caller_untouched(ReferenceEmerDiff.from_parts(parts, config), parts, before)

    with monkeypatch.context() as patch:
        patch.setattr(reference_module, "copy", types.SimpleNamespace(deepcopy=lambda module: module))
        _catches(_assert_caller_untouched, ReferenceEmerDiff.from_parts(parts, config), parts, before)
