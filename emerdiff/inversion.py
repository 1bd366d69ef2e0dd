"""Edit-friendly DDPM inversion (eta 1) over the window t_m, t_m - gap, ..., 1 (spec steps 5-6).

The trajectories of EmerDiff all start at a noisy sample x_{t_m} drawn from the image and follow
x_p = mu_t(x, eps) + sigma_t z_t, where the noise maps z_t are computed once per image so that an
un-nudged trajectory passes through the drawn samples x_t and ends at the image latent z_0.
Everything here is float32 whatever the model's dtype: the UNet's predictions are cast up first.
"""

from __future__ import annotations

import torch

from emerdiff.config import EmerDiffConfig

# SD's scheduler as the authors run it (spec, Notation); betas and prediction type stay the model's own.
SCHEDULER_FLAGS = {"set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading", "clip_sample": False}


class DDPMInversion:
    """The window's timesteps (descending: step 0 is t_m) and the per-step coefficients."""

    def __init__(self, scheduler_config: dict, config: EmerDiffConfig):
        from diffusers import DDIMScheduler

        prediction = scheduler_config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(
                f"this model predicts {prediction!r}; EmerDiff's inversion needs an epsilon-prediction model "
                "(Stable Diffusion 1.x or 2.x-base)."
            )
        # Used only for SD's timestep grid and cumulative alphas, computed as the model's own scheduler does.
        scheduler = DDIMScheduler.from_config(scheduler_config, **SCHEDULER_FLAGS)
        scheduler.set_timesteps(config.num_inference_steps)
        grid = [int(t) for t in scheduler.timesteps]
        if config.modulation_timestep not in grid:
            nearest = sorted(grid, key=lambda t: abs(t - config.modulation_timestep))[:2]
            raise ValueError(
                f"modulation_timestep={config.modulation_timestep} is not on the {config.num_inference_steps}-step "
                f"grid; the nearest grid timesteps are {sorted(nearest)}."
            )
        self.timesteps = [t for t in grid if t <= config.modulation_timestep]  # 281, 261, ..., 1
        gap = scheduler.config.num_train_timesteps // config.num_inference_steps
        alphas = scheduler.alphas_cumprod.double()
        alpha = alphas[self.timesteps]
        # The predecessor p = t - gap; before the schedule's start, the scheduler's final alpha_bar,
        # which is alpha_bar_0 with set_alpha_to_one=False.
        final = scheduler.final_alpha_cumprod.double()
        alpha_prev = torch.stack([alphas[t - gap] if t >= gap else final for t in self.timesteps])
        variance = (1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev)  # sigma_t^2, step 5

        def column(values: torch.Tensor) -> torch.Tensor:
            return values.float()[:, None, None, None]  # (steps, 1, 1, 1)

        self._sqrt_alpha = column(alpha.sqrt())
        self._sqrt_one_minus_alpha = column((1 - alpha).sqrt())
        self._sqrt_alpha_prev = column(alpha_prev.sqrt())
        self._direction = column((1 - alpha_prev - variance).sqrt())
        self._sigma = column(variance.sqrt())
        self.feature_scales = (float(alphas[config.feature_timestep].sqrt()), float((1 - alphas[config.feature_timestep]).sqrt()))

    def to(self, device: torch.device) -> DDPMInversion:
        for name in ("_sqrt_alpha", "_sqrt_one_minus_alpha", "_sqrt_alpha_prev", "_direction", "_sigma"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def samples(self, latent: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(steps, 4, h, w) x_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eta_t for the window, step 0 first.

        One draw per timestep in ascending order (1, 21, ...), float32 on the CPU (determinism
        conventions); ``latent`` is one image's (1, 4, h, w) z_0.
        """
        ascending = [torch.randn(latent.shape[1:], generator=generator, dtype=torch.float32) for _ in self.timesteps]
        noise = torch.stack(ascending[::-1]).to(latent.device)  # (steps, 4, h, w), step 0 (t_m) first
        return self._sqrt_alpha * latent.float() + self._sqrt_one_minus_alpha * noise

    def noise_maps(self, latent: torch.Tensor, samples: torch.Tensor, noise_predictions: torch.Tensor) -> torch.Tensor:
        """(steps, 4, h, w) z_t = (x_p - mu_t(x_t, eps_t)) / sigma_t, with x_p = z_0 after the last step."""
        previous = torch.cat([samples[1:], latent.float()])  # x_p of each step
        return (previous - self._mean(samples, noise_predictions.float(), slice(None))) / self._sigma

    def step(self, latents: torch.Tensor, noise_prediction: torch.Tensor, step: int, noise_maps: torch.Tensor) -> torch.Tensor:
        """x_p = mu_t(x, eps) + sigma_t z_t for every trajectory of a batch (step 6); z_t is shared."""
        index = slice(step, step + 1)
        return self._mean(latents, noise_prediction.float(), index) + self._sigma[index] * noise_maps[index]

    def _mean(self, latents: torch.Tensor, noise_prediction: torch.Tensor, index: slice) -> torch.Tensor:
        """mu_t(x, eps) = sqrt(a_p) x0_hat + sqrt(1 - a_p - sigma_t^2) eps (step 5)."""
        predicted_original = (latents - self._sqrt_one_minus_alpha[index] * noise_prediction) / self._sqrt_alpha[index]
        return self._sqrt_alpha_prev[index] * predicted_original + self._direction[index] * noise_prediction
