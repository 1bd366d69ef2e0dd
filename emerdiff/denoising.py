"""The UNet passes of EmerDiff: feature passes, the inversion (= reference run) and batched modulated runs."""

from __future__ import annotations

import contextlib
import functools

import torch

from emerdiff.attention import AttentionState, FeaturesCaptured, check_layer, install_processors
from emerdiff.config import EmerDiffConfig
from emerdiff.inversion import DDPMInversion
from emerdiff.planning import attention_shapes, probability_layers


class Denoiser:
    """A UNet with EmerDiff's attention processors installed, and the runs built on it.

    Latents stay float32 between passes; each pass casts its input to the UNet's dtype.
    """

    def __init__(self, unet: torch.nn.Module, scheduler_config: dict, prompt_embedding: torch.Tensor,
                 config: EmerDiffConfig, replay_budget_bytes: int = 0):
        check_layer(unet, config.feature_layer, "feature_layer")
        check_layer(unet, config.modulation_layer, "modulation_layer")
        self.unet = unet
        self.prompt_embedding = prompt_embedding  # (1, 77, text_channels)
        self.config = config
        self.inversion = DDPMInversion(scheduler_config, config).to(prompt_embedding.device)
        self.timesteps = self.inversion.timesteps
        self.state = AttentionState(probability_layers=probability_layers(
            attention_shapes(unet, config.resolution), len(self.timesteps), config.attention_replay,
            replay_budget_bytes, prompt_embedding.element_size(),
        ))
        install_processors(unet, self.state, config.feature_layer, config.modulation_layer)
        # None: every run computes the whole UNet at the modulation step too (a layout SharedPrefix does not know).
        self.shared_prefix = SharedPrefix.install(unet, config.modulation_layer)

    def query_features(self, latents: torch.Tensor, noise: torch.Tensor, chunk: int) -> torch.Tensor:
        """(images, tokens, channels) float32: to_q of the feature layer averaged over the noise draws (step 3).

        ``latents`` (images, 4, h, w); ``noise`` (N, 4, h, w), the same N draws for every image.
        The images x draws passes run ``chunk`` at a time, each stopping at the feature layer.
        """
        images, samples = latents.shape[0], noise.shape[0]
        signal_scale, noise_scale = self.inversion.feature_scales
        sums = None
        for first in range(0, images * samples, chunk):
            rows = torch.arange(first, min(first + chunk, images * samples), device=latents.device)
            noisy = signal_scale * latents[rows // samples].float() + noise_scale * noise[rows % samples]
            captured = self._features(noisy).float()  # (rows, tokens, channels)
            if sums is None:
                sums = captured.new_zeros(images, *captured.shape[1:])
            # One draw at a time, in draw order: the same additions whatever the chunking, and no
            # index_add_, whose float atomics on CUDA add in whatever order the threads arrive.
            for offset, row in enumerate(range(first, first + len(rows))):
                sums[row // samples] += captured[offset]
        return sums / samples

    def invert(self, latent: torch.Tensor, samples: torch.Tensor, chunk: int) -> torch.Tensor:
        """(steps, 4, h, w) noise maps z_t of one image (step 5), recording attention for injection (step 7).

        The inversion's UNet inputs are the drawn samples x_t, which is what the un-nudged
        trajectory sees: its passes are the reference run, batched ``chunk`` steps at a time.
        """
        self.state.start("record" if self.config.attention_injection else "plain")
        timesteps = torch.tensor(self.timesteps, device=samples.device)
        predictions = [
            self._unet(samples[first : first + chunk], timesteps[first : first + chunk])
            for first in range(0, len(self.timesteps), chunk)
        ]
        return self.inversion.noise_maps(latent, samples, torch.cat(predictions))

    def modulated_runs(self, start: torch.Tensor, noise_maps: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """(runs, 4, h, w) float32 final latents of len(modulation) trajectories from ``start`` (steps 6 and 8).

        ``start`` is the image's x_{t_m} (1, 4, h, w) and ``noise_maps`` its z_t, shared by every
        run; ``modulation`` is (runs, tokens): the value added to the modulation layer's output at
        each token at t_m. With attention injection, ``invert`` must have run on this image.
        """
        self.state.start("inject" if self.config.attention_injection else "plain", modulation[:, :, None])
        runs = modulation.shape[0]
        latents = start
        for step, timestep in enumerate(self.timesteps):
            self.state.step = step
            if step == 0:
                noise_prediction = self._first_prediction(start, timestep, runs)
            else:
                noise_prediction = self._unet(latents, timestep)
            # At step 0 the (1, ...) start broadcasts against the (runs, ...) predictions.
            latents = self.inversion.step(latents, noise_prediction, step, noise_maps)
        return latents

    def _features(self, noisy: torch.Tensor) -> torch.Tensor:
        self.state.start("features")
        try:
            self._unet(noisy, self.config.feature_timestep)
        except FeaturesCaptured:
            return self.state.features
        raise RuntimeError(f"feature layer {self.config.feature_layer} was never called during the UNet pass")

    def _first_prediction(self, start: torch.Tensor, timestep: int, runs: int) -> torch.Tensor:
        """(runs, ...) noise predictions at the modulation step, every run from ``start``.

        Until the modulation layer the runs are identical (same latent and prompt, attention
        injected from the one reference run), so the UNet prefix is computed once and fanned out
        to the runs where the modulation is added (``SharedPrefix``).
        """
        if runs == 1 or self.shared_prefix is None:
            return self._unet(start.expand(runs, -1, -1, -1), timestep)
        with self.shared_prefix.fanned_out(runs):
            return self._unet(start, timestep)

    def _unet(self, latents: torch.Tensor, timestep: int | torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_embedding.expand(latents.shape[0], -1, -1)
        latents = latents.to(self.prompt_embedding.dtype)
        return self.unet(latents, timestep, encoder_hidden_states=prompt, return_dict=False)[0]


class SharedPrefix:
    """Forward pre-hooks that let a batch-1 UNet pass turn into ``runs`` runs at the modulation layer.

    Every run of a chunk starts the modulation step with the same input, and the UNet's work
    before the modulation is the same in all of them: conv_in, the time embedding, every block
    before the modulation layer's, and the start of that block. While ``fanned_out(runs)`` is
    active the UNet is fed the single shared latent; then

    - the Transformer2DModel holding the modulation layer expands its input to ``runs`` (its
      modulation, added inside it, is where the runs part; the expansion cannot sit at the layer
      itself because the transformer reshapes its output with the batch size it was called with,
      so its few layers before the modulated one are computed per run), and
    - each up block expands the skip tensors that its resnets after that point concatenate with
      the now batched hidden states (``torch.cat`` does not broadcast). Skips produced after the
      point already have ``runs`` rows and are left as they are.

    The time embedding and the prompt stay at batch 1: resnets broadcast the one, the attention
    processors the other (emerdiff/attention.py).
    """

    def __init__(self):
        self.runs = 1

    @classmethod
    def install(cls, unet: torch.nn.Module, modulation_layer: str) -> SharedPrefix | None:
        """Hook ``unet`` for ``modulation_layer``; None when the UNet's layout is not SD's (no shortcut then)."""
        from diffusers import UNet2DConditionModel
        from diffusers.models.transformers.transformer_2d import Transformer2DModel

        located = _transformer_position(modulation_layer)
        if not isinstance(unet, UNet2DConditionModel) or located is None:
            return None
        transformer_path, block, attention_index = located
        transformer = unet.get_submodule(transformer_path)
        if not isinstance(transformer, Transformer2DModel) or not transformer.is_input_continuous:
            return None
        prefix = cls()
        transformer.register_forward_pre_hook(prefix._expand_input, with_kwargs=True)
        for index, up_block in enumerate(unet.up_blocks):
            first_resnet_after = _first_resnet_after(block, attention_index, index, len(up_block.resnets))
            up_block.register_forward_pre_hook(functools.partial(prefix._expand_skips, first_resnet_after), with_kwargs=True)
        return prefix

    @contextlib.contextmanager
    def fanned_out(self, runs: int):
        self.runs = runs
        try:
            yield
        finally:
            self.runs = 1

    def _expand_input(self, module, args, kwargs):
        if self.runs == 1:
            return None
        if args:
            return (args[0].expand(self.runs, -1, -1, -1), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].expand(self.runs, -1, -1, -1)}

    def _expand_skips(self, first_resnet_after: int, module, args, kwargs):
        if self.runs == 1:
            return None
        skips = kwargs.get("res_hidden_states_tuple")
        if skips is None:
            raise RuntimeError("SharedPrefix expects the UNet to pass res_hidden_states_tuple by keyword, as "
                               "diffusers' UNet2DConditionModel does; set Denoiser.shared_prefix = None for this UNet.")
        # Resnet j of the block takes skips[-1 - j]: those of resnets after the point are the first ones.
        after = len(skips) - first_resnet_after
        expanded = tuple(skip.expand(self.runs, -1, -1, -1) for skip in skips[:after]) + tuple(skips[after:])
        return args, {**kwargs, "res_hidden_states_tuple": expanded}


def _transformer_position(layer: str) -> tuple[str, str, int] | None:
    """(path of the Transformer2DModel holding ``layer``, its block path, its index among the block's attentions)."""
    parts = layer.split(".")
    block_length = 1 if parts[0] == "mid_block" else 2
    if parts[0] not in ("down_blocks", "mid_block", "up_blocks") or len(parts) <= block_length + 1:
        return None
    if parts[block_length] != "attentions" or not parts[block_length + 1].isdigit():
        return None
    block = ".".join(parts[:block_length])
    return ".".join(parts[: block_length + 2]), block, int(parts[block_length + 1])


def _first_resnet_after(block: str, attention_index: int, up_index: int, resnets: int) -> int:
    """Index of up block ``up_index``'s first resnet that runs after the modulation layer's transformer."""
    if not block.startswith("up_blocks."):
        return 0  # a down or mid block: the whole up path comes after it
    modulated_up_index = int(block.split(".")[1])
    if up_index < modulated_up_index:
        return resnets
    if up_index > modulated_up_index:
        return 0
    return attention_index + 1  # in CrossAttnUpBlock2D, attention i follows resnet i
