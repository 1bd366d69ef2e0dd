"""The slow reference: EmerDiff written as plainly as the spec reads, for checking the fast path.

SLOW BY DESIGN. One mask and one sign at a time, fp32, attention probabilities stored in the
reference run and re-applied explicitly (softmax(QK^T/sqrt(d)) V in every layer), a full 2-D
blur kernel. It shares no code with the production path beyond image preparation and k-means,
so that agreement between the two means something. Tests and ``benchmarks/`` import it; nothing
in production does.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from emerdiff.config import EmerDiffConfig
from emerdiff.images import resize_labels, to_model_input, to_rgb
from emerdiff.kmeans import kmeans


class ReferenceEmerDiff:
    def __init__(self, unet, vae, prompt_embedding: torch.Tensor, scheduler, config: EmerDiffConfig):
        self.unet, self.vae, self.prompt, self.scheduler, self.config = unet, vae, prompt_embedding, scheduler, config
        self.mode = "plain"  # "plain" | "record" | "replay" | "features"
        self.step = 0
        self.modulation: torch.Tensor | None = None  # (tokens,)
        self.probabilities: dict[tuple[str, int], torch.Tensor] = {}
        self.features: torch.Tensor | None = None
        self.unet.set_attn_processor(
            {f"{name}.processor": _ExplicitAttention(name, self) for name in _attention_names(unet)}
        )

    @classmethod
    def from_segmenter(cls, segmenter) -> ReferenceEmerDiff:
        """fp32 copies of the segmenter's model, on its device, with the same config."""
        from emerdiff.denoising import ddim_scheduler

        unet = copy.deepcopy(segmenter.denoiser.unet).float()
        vae = copy.deepcopy(segmenter.vae).float()
        prompt = segmenter.denoiser.prompt_embedding.float()
        return cls(unet, vae, prompt, ddim_scheduler(dict(segmenter.denoiser.scheduler.config)), segmenter.config)

    @torch.no_grad()
    def segment(self, image) -> np.ndarray:
        picture = to_rgb(image)
        latent, noise = self._encode(picture)
        features = self._features(latent, noise)
        side = int(round(features.shape[0] ** 0.5))
        lowres = kmeans(features, self.config.num_masks, self.config.kmeans_iterations, self.config.seed).view(side, side)
        return self._labels(picture, latent, noise, lowres.cpu().numpy(), self.config.num_masks)

    @torch.no_grad()
    def upsample(self, image, lowres_labels: np.ndarray) -> np.ndarray:
        """Labels (H, W) at the image's size from caller-supplied low-res labels."""
        picture = to_rgb(image)
        latent, noise = self._encode(picture)
        lowres = np.asarray(lowres_labels).astype(np.int64)
        return self._labels(picture, latent, noise, lowres, int(lowres.max()) + 1)

    @torch.no_grad()
    def difference_maps(self, image, lowres_labels: np.ndarray) -> torch.Tensor:
        """(K, R, R) unblurred ||I- - I+|| per mask."""
        latent, noise = self._encode(to_rgb(image))
        lowres = np.asarray(lowres_labels).astype(np.int64)
        return self._differences(latent, noise, lowres, int(lowres.max()) + 1)

    def _encode(self, picture):
        device = self.prompt.device
        pixels = to_model_input(picture, self.config.resolution).to(device)
        latent = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        generator = torch.Generator("cpu").manual_seed(self.config.seed)
        noise = torch.randn(latent.shape, generator=generator, dtype=torch.float32).to(device)
        return latent, noise

    def _features(self, latent, noise) -> torch.Tensor:
        t_f = self.config.feature_timestep
        self.mode = "features"
        noisy = self.scheduler.add_noise(latent, noise, torch.tensor([t_f]))
        self.unet(noisy, t_f, encoder_hidden_states=self.prompt)
        return self.features[0]

    def _labels(self, picture, latent, noise, lowres: np.ndarray, num_masks: int) -> np.ndarray:
        differences = self._differences(latent, noise, lowres, num_masks)
        blurred = torch.stack([self._blur(d) for d in differences])
        labels = blurred.argmax(dim=0).cpu().numpy()
        return resize_labels(labels, picture.height, picture.width)

    def _differences(self, latent, noise, lowres: np.ndarray, num_masks: int) -> torch.Tensor:
        start = self.scheduler.add_noise(latent, noise, torch.tensor([self.config.modulation_timestep]))
        timesteps = self._timesteps()
        if self.config.attention_injection:
            self._run(start, timesteps, "record", None)
        side = self._modulation_side()
        grid = lowres if lowres.shape == (side, side) else resize_labels(lowres, side, side)
        maps = []
        for mask_id in range(num_masks):
            mask = torch.from_numpy((grid.reshape(-1) == mask_id).astype(np.float32)).to(start.device)
            mode = "replay" if self.config.attention_injection else "plain"
            plus = self._decode(self._run(start, timesteps, mode, +self.config.modulation_strength * mask))
            minus = self._decode(self._run(start, timesteps, mode, -self.config.modulation_strength * mask))
            maps.append(torch.sqrt(((minus - plus) ** 2).sum(dim=0)))
        return torch.stack(maps)

    def _run(self, latents, timesteps, mode, modulation):
        self.mode, self.modulation = mode, modulation
        for step, t in enumerate(timesteps):
            self.step = step
            noise_prediction = self.unet(latents, t, encoder_hidden_states=self.prompt).sample
            latents = self.scheduler.step(noise_prediction, t, latents).prev_sample
        return latents

    def _timesteps(self) -> list[int]:
        self.scheduler.set_timesteps(self.config.num_inference_steps)
        return [int(t) for t in self.scheduler.timesteps if int(t) <= self.config.modulation_timestep]

    def _decode(self, latents) -> torch.Tensor:
        image = self.vae.decode(latents / self.vae.config.scaling_factor).sample[0]
        return image.clamp(-1.0, 1.0)

    def _blur(self, image: torch.Tensor) -> torch.Tensor:
        size, sigma = self.config.blur_kernel_size, self.config.blur_sigma
        if size == 1:
            return image
        x = torch.arange(size, dtype=torch.float64) - size // 2
        one_d = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = torch.outer(one_d, one_d)
        kernel = (kernel / kernel.sum()).float().to(image.device)
        padded = F.pad(image[None, None], (size // 2,) * 4, mode="reflect")
        return F.conv2d(padded, kernel[None, None])[0, 0]

    def _modulation_side(self) -> int:
        # Probe the modulation layer's token count with a forward hook on a throwaway pass.
        seen = {}
        module = self.unet.get_submodule(self.config.modulation_layer)
        handle = module.register_forward_hook(lambda m, args, output: seen.setdefault("tokens", output.shape[1]))
        side = self.config.resolution // 8
        self.mode = "plain"
        self.unet(torch.zeros(1, 4, side, side, device=self.prompt.device), 1, encoder_hidden_states=self.prompt)
        handle.remove()
        return int(round(seen["tokens"] ** 0.5))


class _ExplicitAttention:
    def __init__(self, name: str, runner: ReferenceEmerDiff):
        self.name, self.runner = name, runner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        runner = self.runner
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if runner.mode == "features" and self.name == runner.config.feature_layer:
            runner.features = attn.to_q(hidden_states)
        value = _heads(attn.to_v(context), attn.heads)
        if runner.mode == "replay":
            probabilities = runner.probabilities[(self.name, runner.step)]
        else:
            query = _heads(attn.to_q(hidden_states), attn.heads)
            key = _heads(attn.to_k(context), attn.heads)
            probabilities = torch.softmax(query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5, dim=-1)
            if runner.mode == "record":
                runner.probabilities[(self.name, runner.step)] = probabilities
        attended = probabilities @ value  # (1, heads, tokens, head_dim)
        batch, heads, tokens, head_dim = attended.shape
        output = attn.to_out[0](attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim))
        if self.name == runner.config.modulation_layer and runner.modulation is not None and runner.step == 0:
            output = output + runner.modulation[None, :, None]
        return output


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = tensor.shape
    return tensor.reshape(batch, tokens, heads, channels // heads).permute(0, 2, 1, 3)


def _attention_names(unet) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [name for name, module in unet.named_modules() if isinstance(module, Attention)]
