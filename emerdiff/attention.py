"""Attention processors for EmerDiff's three kinds of UNet pass (spec steps 3, 7 and 8).

One ``EmerDiffAttnProcessor`` sits in every attention layer of the UNet and reads what to do
from a shared ``AttentionState``:

- ``features``: the feature layer stores ``to_q(hidden_states)`` and stops the forward pass;
- ``record``:   the reference run (the inversion passes, one row per step); self-attention layers keep their query and key per step (or
                their attention probabilities, see below), cross-attention layers their output
                (with the constant empty prompt, that output is all a modulated run would
                recompute; spec "Where the cost is");
- ``inject``:   modulated runs; self-attention uses the recorded query/key (or probabilities)
                with the run's own value, cross-attention reuses the recorded output;
- ``plain``:    stock attention (runs without injection).

Replaying probabilities instead of query/key gives the same maps (spec step 7) and skips the
QK^T product in every modulated run: it halves the attention work, at N^2 memory per head. Layers
listed in ``state.probability_layers`` replay probabilities; ``emerdiff.planning.probability_layers``
picks them.

In every mode the modulation layer adds ``state.modulation`` (batch, tokens, 1) to its output
at the first denoising step, after ``to_out`` and before the block's residual add (spec step 8).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F

Mode = Literal["features", "record", "inject", "plain"]


class FeaturesCaptured(Exception):
    """Raised by the feature layer to end a features pass early: nothing after it is needed."""


@dataclasses.dataclass
class AttentionState:
    mode: Mode = "plain"
    step: int = 0
    modulation: torch.Tensor | None = None  # (batch, tokens, 1), applied at step 0
    features: torch.Tensor | None = None  # (batch, tokens, channels)
    probability_layers: frozenset[str] = frozenset()
    query_key: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = dataclasses.field(default_factory=dict)
    probabilities: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)
    outputs: dict[str, list[torch.Tensor]] = dataclasses.field(default_factory=dict)

    def start(self, mode: Mode, modulation: torch.Tensor | None = None) -> None:
        if mode == "record":
            self.query_key.clear()
            self.probabilities.clear()
            self.outputs.clear()
        self.mode, self.step, self.modulation, self.features = mode, 0, modulation, None


def attention_layer_names(unet: torch.nn.Module) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [name for name, module in unet.named_modules() if isinstance(module, Attention)]


def check_layer(unet: torch.nn.Module, name: str, parameter: str) -> None:
    names = attention_layer_names(unet)
    if name not in names:
        raise ValueError(
            f"{parameter}={name!r} is not an attention layer of this UNet. Valid layers:\n  " + "\n  ".join(names)
        )


def layer_grid_side(unet: torch.nn.Module, name: str, resolution: int) -> int:
    """Side of the square token grid a layer sees for a resolution x resolution image.

    Indexed by block, never by absolute resolution (spec step 3): down block i works at latent/2^i,
    up block i at latent/2^(levels-1-i), the mid block at the coarsest level.
    """
    levels = len(unet.config.block_out_channels)
    block, _, rest = name.partition(".")
    coarsest = levels - 1
    if block == "down_blocks":
        depth = int(rest.split(".")[0])
    elif block == "up_blocks":
        depth = coarsest - int(rest.split(".")[0])
    elif block == "mid_block":
        depth = coarsest
    else:
        raise ValueError(f"cannot tell the token grid of layer {name!r}: expected a down_blocks, mid_block or up_blocks path")
    return resolution // 8 // 2**depth


def install_processors(unet: torch.nn.Module, state: AttentionState, feature_layer: str, modulation_layer: str) -> None:
    from diffusers.models.attention_processor import Attention

    processors = {}
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            _check_supported(name, module)
            processors[f"{name}.processor"] = EmerDiffAttnProcessor(
                name, state, is_feature=name == feature_layer, is_modulated=name == modulation_layer
            )
    unet.set_attn_processor(processors)


def _check_supported(name: str, attn) -> None:
    unsupported = [
        flag for flag in ("spatial_norm", "group_norm", "norm_cross", "norm_q", "norm_k") if getattr(attn, flag, None) is not None
    ]
    if attn.residual_connection or attn.rescale_output_factor != 1.0:
        unsupported.append("residual_connection/rescale_output_factor")
    if unsupported:
        raise ValueError(f"Attention layer {name} uses {unsupported}, which Stable Diffusion 1.x/2.x UNets do not; this UNet is not supported.")


class EmerDiffAttnProcessor:
    """diffusers' AttnProcessor2_0 body for SD's transformer blocks, plus EmerDiff's deviations."""

    def __init__(self, name: str, state: AttentionState, is_feature: bool, is_modulated: bool):
        self.name = name
        self.state = state
        self.is_feature = is_feature
        self.is_modulated = is_modulated

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        state = self.state
        is_cross = encoder_hidden_states is not None
        if state.mode == "features" and self.is_feature:
            state.features = attn.to_q(hidden_states)  # (batch, tokens, channels), before the head split
            raise FeaturesCaptured
        if state.mode == "inject" and is_cross:
            output = self._recorded_output(hidden_states.shape[0])
        elif state.mode == "inject":
            output = self._injected_attention(attn, hidden_states)
        else:
            output = self._attention(attn, hidden_states, encoder_hidden_states, is_cross)
        if self.is_modulated and state.modulation is not None and state.step == 0:
            # Spec step 8: + c * M after the output projection, broadcast over channels.
            output = output + state.modulation.to(output.dtype)
        return output

    def _attention(self, attn, hidden_states, encoder_hidden_states, is_cross: bool) -> torch.Tensor:
        context = encoder_hidden_states if is_cross else hidden_states
        query = split_heads(attn.to_q(hidden_states), attn.heads)  # (batch, heads, tokens, head_dim)
        key = split_heads(attn.to_k(context), attn.heads)
        value = split_heads(attn.to_v(context), attn.heads)
        if key.shape[0] != query.shape[0]:
            # The prompt is batch 1 where the shared prefix (emerdiff/denoising.py) fans runs out mid-UNet.
            key, value = key.expand(query.shape[0], -1, -1, -1), value.expand(query.shape[0], -1, -1, -1)
        state = self.state
        # In a recording pass each row of the batch is one step of the reference run (the inversion
        # passes, batched), so what is kept is split into per-step views.
        if state.mode == "record" and self.name in state.probability_layers:
            probabilities = attention_probabilities(query, key)
            state.probabilities.setdefault(self.name, []).extend(probabilities.split(1))
            return project_out(attn, probabilities @ value)
        output = project_out(attn, F.scaled_dot_product_attention(query, key, value))
        if state.mode == "record" and is_cross:
            state.outputs.setdefault(self.name, []).extend(output.split(1))
        elif state.mode == "record":
            state.query_key.setdefault(self.name, []).extend(zip(query.split(1), key.split(1)))
        return output

    def _injected_attention(self, attn, hidden_states) -> torch.Tensor:
        state = self.state
        value = split_heads(attn.to_v(hidden_states), attn.heads)
        if self.name in state.probability_layers:
            return project_out(attn, apply_probabilities(state.probabilities[self.name][state.step], value))
        query, key = state.query_key[self.name][state.step]  # (1, heads, tokens, head_dim)
        batch = hidden_states.shape[0]
        # expand() broadcasts the recorded query/key over the batch without copying them.
        attended = F.scaled_dot_product_attention(query.expand(batch, -1, -1, -1), key.expand(batch, -1, -1, -1), value)
        return project_out(attn, attended)

    def _recorded_output(self, batch: int) -> torch.Tensor:
        return self.state.outputs[self.name][self.state.step].expand(batch, -1, -1)


def attention_probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, tokens) softmax(QK^T / sqrt(d)), in the query's dtype.

    The logits and the softmax are float32 whatever the model's dtype: in float16, unscaled QK^T
    of SD's 64x64 layers can overflow, which the fused kernels avoid by scaling first and
    accumulating in float32. One row of the batch (one step of the reference run) at a time: the
    float32 logits and softmax of a 64x64 layer take 0.5 GiB each per step, 15 steps at once would
    take 15 GiB (emerdiff/planning.py counts one step). Computed once per image, so the loop costs nothing.
    """
    probabilities = query.new_empty(*query.shape[:-1], key.shape[-2])
    for row in range(query.shape[0]):
        probabilities[row] = _float32_softmax(query[row], key[row])
    return probabilities


def _float32_softmax(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    # A function of its own, so that one row's logits are freed before the next row's are made.
    logits = (query.float() * query.shape[-1] ** -0.5) @ key.float().transpose(-1, -2)  # (heads, tokens, tokens)
    return torch.softmax(logits, dim=-1)


def apply_probabilities(probabilities: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """(batch, heads, tokens, head_dim) P V for one shared P, as a single GEMM per head.

    The batch is folded into the value's columns, so P is read once and never expanded.
    """
    batch, heads, tokens, head_dim = value.shape
    columns = value.permute(1, 2, 0, 3).reshape(heads, tokens, batch * head_dim)
    attended = torch.bmm(probabilities[0], columns)  # (heads, tokens, batch * head_dim)
    return attended.view(heads, tokens, batch, head_dim).permute(2, 0, 1, 3)


def split_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    batch, tokens, channels = tensor.shape
    return tensor.view(batch, tokens, heads, channels // heads).transpose(1, 2)  # (batch, heads, tokens, head_dim)


def project_out(attn, attended: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, head_dim = attended.shape
    merged = attended.transpose(1, 2).reshape(batch, tokens, heads * head_dim)  # (batch, tokens, channels)
    return attn.to_out[1](attn.to_out[0](merged))  # linear, then dropout (identity in eval)
