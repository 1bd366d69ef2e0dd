"""The UNet passes of EmerDiff: the features pass, the reference run and batched modulated runs."""

from __future__ import annotations

import torch

from emerdiff.attention import AttentionState, FeaturesCaptured, check_layer, install_processors, probability_layers
from emerdiff.config import EmerDiffConfig


def ddim_scheduler(scheduler_config: dict):
    """DDIM, eta 0, as the spec fixes it (step 6); betas and prediction type stay the model's own."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(
        scheduler_config,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )


def denoising_timesteps(scheduler, config: EmerDiffConfig) -> list[int]:
    """The grid timesteps from t_m down to the last one (with defaults: 281, 261, ..., 1)."""
    scheduler.set_timesteps(config.num_inference_steps)
    grid = [int(t) for t in scheduler.timesteps]
    if config.modulation_timestep not in grid:
        nearest = sorted(grid, key=lambda t: abs(t - config.modulation_timestep))[:2]
        raise ValueError(
            f"modulation_timestep={config.modulation_timestep} is not on the {config.num_inference_steps}-step "
            f"DDIM grid; the nearest grid timesteps are {sorted(nearest)}."
        )
    return [t for t in grid if t <= config.modulation_timestep]


class Denoiser:
    """A UNet with EmerDiff's attention processors installed, and the runs built on it."""

    def __init__(self, unet: torch.nn.Module, scheduler, prompt_embedding: torch.Tensor, config: EmerDiffConfig,
                 replay_budget_bytes: int = 0):
        check_layer(unet, config.feature_layer, "feature_layer")
        check_layer(unet, config.modulation_layer, "modulation_layer")
        self.unet = unet
        self.scheduler = scheduler
        self.prompt_embedding = prompt_embedding  # (1, 77, text_channels)
        self.config = config
        self.timesteps = denoising_timesteps(scheduler, config)
        self.state = AttentionState(probability_layers=probability_layers(
            unet, config.resolution, len(self.timesteps), config.attention_replay, replay_budget_bytes,
            prompt_embedding.element_size(),
        ))
        install_processors(unet, self.state, config.feature_layer, config.modulation_layer)

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """The forward process q(x_t | x_0) with the image's own noise."""
        timesteps = torch.full((latents.shape[0],), timestep, dtype=torch.long, device=latents.device)
        return self.scheduler.add_noise(latents, noise, timesteps)

    def query_features(self, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, channels): to_q of the feature layer at t_f (spec step 3)."""
        self.state.start("features")
        noisy = self.noised(latents, noise, self.config.feature_timestep)
        try:
            self._unet(noisy, self.config.feature_timestep)
        except FeaturesCaptured:
            return self.state.features
        raise RuntimeError(f"feature layer {self.config.feature_layer} was never called during the UNet pass")

    def reference_run(self, start: torch.Tensor) -> torch.Tensor:
        """Denoise the shared start once, unmodulated, recording attention for injection (spec step 7)."""
        return self._denoise(start, "record", modulation=None)

    def modulated_runs(self, start: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        """Final latents of len(modulation) runs from the same start (spec step 8).

        ``modulation`` is (runs, tokens): the value added to the modulation layer's output at each
        token at step t_m. With attention injection, ``reference_run`` must have run on this start.
        """
        mode = "inject" if self.config.attention_injection else "plain"
        batch = modulation.shape[0]
        return self._denoise(start.expand(batch, -1, -1, -1), mode, modulation[:, :, None])

    def _denoise(self, latents: torch.Tensor, mode: str, modulation: torch.Tensor | None) -> torch.Tensor:
        self.state.start(mode, modulation)
        for step, timestep in enumerate(self.timesteps):
            self.state.step = step
            noise_prediction = self._unet(latents, timestep)
            latents = self.scheduler.step(noise_prediction, timestep, latents).prev_sample
        return latents

    def _unet(self, latents: torch.Tensor, timestep: int) -> torch.Tensor:
        prompt = self.prompt_embedding.expand(latents.shape[0], -1, -1)
        return self.unet(latents, timestep, encoder_hidden_states=prompt, return_dict=False)[0]
