"""Every dtype path on a CPU: float16 and bfloat16 models label like float32 on most pixels, the
comparisons after the decode stay float32, the UNet is never silently upcast, and no dtype
mismatch reaches the user.

The agreement thresholds sit under shares measured on this code (docs/performance.md, "Precision"):
tiny, K=2, t_m=61, astronaut + coffee: float16 0.9906 and 0.9914, bfloat16 0.9359 and 0.9289; mid, K=4, t_m=61, astronaut:
float16 0.9897, bfloat16 0.9265. float16 and bfloat16 matrix products are slow on most CPUs, hence
the short 4-step window (t_m = 61) and one or two images.
"""

import copy

import numpy as np
import pytest
import torch

from benchmarks.models import random_parts
from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from emerdiff.attention import AttentionState, EmerDiffAttnProcessor, attention_probabilities

CONFIGS = {
    "tiny": EmerDiffConfig(num_masks=2, resolution=128, feature_samples=2, kmeans_restarts=2, modulation_timestep=61),
    "mid": EmerDiffConfig(num_masks=4, resolution=128, feature_samples=2, kmeans_restarts=2, modulation_timestep=61),
}
IMAGES = {"tiny": ("astronaut", "coffee"), "mid": ("astronaut",)}
# Lowest share of label pixels identical to float32's, a margin under the measured share.
THRESHOLDS = {("tiny", "float16"): 0.97, ("tiny", "bfloat16"): 0.88, ("mid", "float16"): 0.97, ("mid", "bfloat16"): 0.88}


def segment(shape: str, dtype: torch.dtype, photos) -> tuple[EmerDiffSegmenter, list[np.ndarray]]:
    # random_parts gives float32 modules (seed 0: the same weights every time); the segmenter casts them.
    segmenter = EmerDiffSegmenter(random_parts(shape, seed=0), CONFIGS[shape], torch.device("cpu"), dtype)
    return segmenter, [segmenter.segment(photos[name]).labels for name in IMAGES[shape]]


@pytest.fixture(scope="module")
def float32_labels(photos):
    return {shape: segment(shape, torch.float32, photos)[1] for shape in CONFIGS}


@pytest.mark.parametrize("shape, dtype", sorted(THRESHOLDS))
def test_labels_agree_with_float32(shape, dtype, photos, float32_labels):
    segmenter, labels = segment(shape, getattr(torch, dtype), photos)
    shares = [float(np.mean(a == b)) for a, b in zip(labels, float32_labels[shape])]
    assert min(shares) >= THRESHOLDS[shape, dtype], shares
    # Nothing upcast the UNet or the text encoder on the way; the VAE runs in float32 by design.
    assert {p.dtype for p in segmenter.denoiser.unet.parameters()} == {getattr(torch, dtype)}
    assert segmenter.denoiser.prompt_embedding.dtype == getattr(torch, dtype)
    assert {p.dtype for p in segmenter.vae.parameters()} == {torch.float32}


def test_comparisons_after_the_decode_run_in_float32(photos, monkeypatch):
    """k-means, the blur, the differences and the argmax see float32 whatever the model's dtype."""
    import emerdiff.maps
    import emerdiff.segmenter

    seen: dict[str, set] = {}

    def spy(module, name):
        original = getattr(module, name)

        def recorded(*args, **kwargs):
            tensors = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
            result = original(*args, **kwargs)
            outputs = [result] if isinstance(result, torch.Tensor) and result.is_floating_point() else []
            seen.setdefault(name, set()).update(t.dtype for t in tensors + outputs)
            return result

        monkeypatch.setattr(module, name, recorded)

    spy(emerdiff.segmenter, "kmeans")
    spy(emerdiff.segmenter, "difference_norms")
    spy(emerdiff.maps, "gaussian_blur")  # called inside difference_norms
    spy(emerdiff.segmenter, "confidence_margin")
    segmenter = EmerDiffSegmenter(random_parts("tiny"), CONFIGS["tiny"], torch.device("cpu"), torch.float16)
    for method in ("_decode", "_difference_maps"):  # the argmax runs on _difference_maps' output
        spy(segmenter, method)
    segmenter.segment(photos["coffee"])
    assert set(seen) == {"kmeans", "difference_norms", "gaussian_blur", "confidence_margin", "_decode", "_difference_maps"}
    assert all(dtypes == {torch.float32} for dtypes in seen.values()), seen


def test_parts_in_any_dtype_are_cast_not_mismatched():
    """Parts arriving in float32 with a float16 request, or with a float16 VAE, build a consistent segmenter."""
    parts = random_parts("tiny")
    parts.vae.half()
    segmenter = EmerDiffSegmenter(parts, CONFIGS["tiny"], torch.device("cpu"), torch.bfloat16)
    assert segmenter.vae.dtype == torch.float32
    assert segmenter.denoiser.unet.dtype == segmenter.denoiser.prompt_embedding.dtype == torch.bfloat16


# -- the stored attention probabilities ------------------------------------------------------------


def test_attention_probabilities_in_float16_match_float64():
    """Logits and softmax in float32: no overflow where an unscaled float16 QK^T would reach inf."""
    generator = torch.Generator().manual_seed(0)
    query = (torch.randn(1, 2, 256, 64, generator=generator) * 60).half()
    key = (torch.randn(1, 2, 256, 64, generator=generator) * 60).half()
    assert torch.isinf(query @ key.transpose(-1, -2)).any()  # what computing QK^T in float16 first would give
    probabilities = attention_probabilities(query, key)
    assert probabilities.dtype == torch.float16
    exact = torch.softmax((query.double() @ key.double().transpose(-1, -2)) / 8, dim=-1)
    assert torch.isfinite(probabilities).all()
    # float16 rounds probabilities by at most 2^-12, float32 logits of ~1e4 are off by ~1e-3 relative 1e-7.
    assert (probabilities.double() - exact).abs().max() <= 1e-3


@pytest.mark.parametrize("mode", ["plain", "record"])
def test_upcast_attention_layers_give_what_diffusers_upcast_gives(mode):
    """SD 2.x sets upcast_attention: diffusers then takes QK^T in float32. Ours (SDPA, or float32
    probabilities when recording) matches diffusers' upcasting processor run in float32."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=2, dim_head=32, upcast_attention=True, upcast_softmax=True).eval()
    expected_attn = copy.deepcopy(attn)
    expected_attn.set_processor(AttnProcessor())
    hidden = torch.randn(2, 64, 64) * 3
    state = AttentionState(probability_layers=frozenset({"attn1"}))
    state.start(mode)
    attn.half().set_processor(EmerDiffAttnProcessor("attn1", state, is_feature=False, is_modulated=False))
    with torch.inference_mode():
        ours = attn(hidden.half()).float()
        expected = expected_attn(hidden)
    torch.testing.assert_close(ours, expected, atol=2e-2, rtol=2e-2)


# -- TF32: an explicit choice, whatever the process default --------------------------------------


@pytest.fixture
def opposite_process_default():
    """Set the process-wide float32 flags to what the segmenter must not use; restored afterwards."""
    convolutions, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    previous = convolutions.fp32_precision, matmul.fp32_precision

    def set_flags(convolution_precision: str) -> tuple[str, str]:
        convolutions.fp32_precision, matmul.fp32_precision = convolution_precision, "tf32"
        return convolution_precision, "tf32"

    yield set_flags
    convolutions.fp32_precision, matmul.fp32_precision = previous


@pytest.mark.parametrize("tf32", [True, False])
def test_float32_convolutions_run_as_the_config_says(tiny_model, photos, opposite_process_default, tf32):
    """The flags seen inside the VAE are the config's (matrix multiplies always IEEE), and put back after."""
    before = opposite_process_default("ieee" if tf32 else "tf32")
    config = CONFIGS["tiny"].replace(feature_samples=1, kmeans_restarts=1, tf32=tf32)
    segmenter = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=config, device="cpu")
    seen = set()
    for part in (segmenter.vae.encoder, segmenter.vae.decoder):
        part.register_forward_pre_hook(lambda module, args: seen.add(
            (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)))
    segmenter.segment(photos["coffee"])
    assert seen == {("tf32" if tf32 else "ieee", "ieee")}
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


def test_the_precision_in_use_is_part_of_the_model_info():
    """What a labelling job records in _job.json's model_info: TF32 only where CUDA runs it."""
    from emerdiff.segmenter import float32_precision

    assert float32_precision("cuda", True) == {"float32_convolutions": "tf32", "float32_matmul": "ieee"}
    assert float32_precision("cuda", False) == {"float32_convolutions": "ieee", "float32_matmul": "ieee"}
    assert float32_precision("cpu", True) == {"float32_convolutions": "ieee", "float32_matmul": "ieee"}
