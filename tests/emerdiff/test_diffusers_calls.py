"""What emerdiff relies on in diffusers' internals, pinned: if a diffusers release changes these call
shapes, these tests say which assumption broke and where it is used (pyproject.toml bounds diffusers
to the tested minor version).
"""

import inspect

import diffusers
import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.transformers.transformer_2d import Transformer2DModel

from emerdiff.segmenter import _run_eagerly

VERSION = f"diffusers {diffusers.__version__}"


def _calls(modules, run) -> list[tuple[str, tuple, dict]]:
    """(name, positional args, keyword args) of every forward call of ``modules`` while ``run()`` runs."""
    seen, handles = [], []
    for name, module in modules:
        handles.append(module.register_forward_pre_hook(
            lambda module, args, kwargs, name=name: seen.append((name, args, kwargs)), with_kwargs=True))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _unet_pass(segmenter):
    def run():
        latents = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        segmenter.denoiser.state.start("plain")
        with torch.inference_mode():
            segmenter.denoiser._unet(latents, 261)

    return run


def test_up_blocks_get_their_skip_tensors_by_keyword(tiny_segmenter):
    unet = tiny_segmenter.denoiser.unet
    calls = _calls([(f"up_blocks.{i}", block) for i, block in enumerate(unet.up_blocks)], _unet_pass(tiny_segmenter))
    assert len(calls) == len(unet.up_blocks)
    for name, args, kwargs in calls:
        skips = kwargs.get("res_hidden_states_tuple")
        assert isinstance(skips, tuple) and all(isinstance(skip, torch.Tensor) for skip in skips), (
            f"{VERSION}'s UNet2DConditionModel no longer passes res_hidden_states_tuple to {name} by keyword "
            f"(positional args: {len(args)}, keywords: {sorted(kwargs)}). SharedPrefix._expand_skips "
            "(emerdiff/denoising.py) expands those skips by keyword: adapt it to the new call, then raise "
            "the diffusers bound in pyproject.toml.")


def test_transformers_get_their_hidden_states_first_or_by_keyword(tiny_segmenter):
    unet = tiny_segmenter.denoiser.unet
    transformers = [(name, module) for name, module in unet.named_modules() if isinstance(module, Transformer2DModel)]
    calls = _calls(transformers, _unet_pass(tiny_segmenter))
    assert len(calls) == len(transformers) == 16
    for name, args, kwargs in calls:
        hidden = args[0] if args else kwargs.get("hidden_states")
        assert isinstance(hidden, torch.Tensor) and hidden.dim() == 4, (
            f"{VERSION} calls the Transformer2DModel {name} without the (batch, channels, h, w) hidden states "
            f"first or as hidden_states= (positional args: {len(args)}, keywords: {sorted(kwargs)}). "
            "SharedPrefix._expand_input (emerdiff/denoising.py) expands them: adapt it, then raise the diffusers "
            "bound in pyproject.toml.")


class _CountingProcessor:
    def __init__(self):
        self.calls = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        self.calls.append((attn, hidden_states.shape, encoder_hidden_states is not None))
        return hidden_states


def test_attention_forward_hands_its_inputs_to_the_processor_and_can_be_replaced_per_module():
    """torch_compile="unet" replaces each Attention's forward on the instance (_run_eagerly); EmerDiff's
    processors then get every call, with the module, the hidden states and the context."""
    parameters = list(inspect.signature(Attention.forward).parameters)
    assert parameters[:4] == ["self", "hidden_states", "encoder_hidden_states", "attention_mask"], (
        f"{VERSION}'s Attention.forward takes {parameters}; emerdiff's processors (emerdiff/attention.py) and "
        "_run_eagerly (emerdiff/segmenter.py) expect (hidden_states, encoder_hidden_states, attention_mask, ...).")
    attention = Attention(query_dim=8, heads=2, dim_head=4, cross_attention_dim=6)
    processor = _CountingProcessor()
    attention.set_processor(processor)
    _run_eagerly(attention)
    assert "forward" in vars(attention), f"{VERSION}: setting forward on the instance no longer replaces it"
    hidden, context = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    assert attention(hidden, encoder_hidden_states=context) is hidden
    assert attention(hidden) is hidden
    assert processor.calls == [(attention, hidden.shape, True), (attention, hidden.shape, False)], (
        f"{VERSION}'s Attention.forward no longer calls its processor as processor(attn, hidden_states, "
        "encoder_hidden_states=..., attention_mask=...): EmerDiffAttnProcessor (emerdiff/attention.py) needs that call.")
