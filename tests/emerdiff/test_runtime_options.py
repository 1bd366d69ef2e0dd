"""channels_last and torch_compile: execution options that leave the method's results alone."""

import copy
import json

import numpy as np
import pytest
import torch

from emerdiff import EmerDiffConfig, EmerDiffSegmenter
from jobs import label, segment
from jobs.options import config_from_args


def difference_maps(segmenter: EmerDiffSegmenter, photo) -> torch.Tensor:
    """(K, R, R) difference maps of the full method (spec steps 1-10), before the argmax."""
    from emerdiff.images import to_rgb

    with torch.inference_mode():
        latents = segmenter._encode([to_rgb(photo)])
        features = segmenter._features(latents)[0]
        masks = segmenter._token_masks(segmenter._lowres_labels(features), segmenter.config.num_masks)
        return segmenter._difference_maps(latents, masks)


# -- config and command line ---------------------------------------------------------------------


def test_runtime_options_default_to_todays_behaviour():
    config = EmerDiffConfig()
    assert config.channels_last is False
    assert config.torch_compile == "none"


def test_runtime_options_are_not_hashed_and_round_trip_through_json():
    config = EmerDiffConfig(channels_last=True, torch_compile="unet+vae")
    assert config.config_hash == EmerDiffConfig().config_hash
    assert EmerDiffConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"channels_last": "yes"}, "channels_last must be true or false, got 'yes'"),
        ({"channels_last": 1}, "channels_last must be true or false, got 1"),
        ({"torch_compile": "inductor"}, r"torch_compile must be one of \['none', 'vae', 'unet', 'unet\+vae'\], got 'inductor'"),
        ({"torch_compile": True}, "torch_compile must be one of"),
    ],
)
def test_bad_runtime_options_are_named_with_what_is_allowed(changes, message):
    with pytest.raises(ValueError, match=message):
        EmerDiffConfig(**changes)


@pytest.mark.parametrize("command", [segment, label])
def test_segment_and_label_take_the_runtime_flags(command, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    required = ["photo.jpg", "--out", str(tmp_path)] if command is segment else ["--input", "a.tar", "--output", str(tmp_path)]
    args = parser.parse_args([*required, "--channels-last", "true", "--torch-compile", "unet+vae"])
    config = config_from_args(args)
    assert (config.channels_last, config.torch_compile) == (True, "unet+vae")
    if command is label:  # what the Ray actors load the model with
        assert label.job_from_args(args).method == config
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--torch-compile", "everything"])


# -- channels_last -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channels_last_segmenter(tiny_model, tiny_config):
    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=tiny_config.replace(channels_last=True), device="cpu")


def test_channels_last_puts_the_unets_convolutions_in_nhwc_and_leaves_the_vae(channels_last_segmenter, tiny_segmenter):
    def nhwc(module: torch.nn.Module) -> bool:
        return module.weight.is_contiguous(memory_format=torch.channels_last)

    for segmenter, expected in ((channels_last_segmenter, True), (tiny_segmenter, False)):
        assert nhwc(segmenter.denoiser.unet.conv_in) is expected
        # The VAE stays in the default layout (on CUDA its GroupNorms would copy channels_last inputs).
        assert not nhwc(segmenter.vae.decoder.conv_in) and not nhwc(segmenter.vae.encoder.conv_in)


def test_channels_last_gives_the_same_difference_maps_and_labels(channels_last_segmenter, tiny_segmenter, photos):
    for photo in photos.values():
        expected = difference_maps(tiny_segmenter, photo)
        actual = difference_maps(channels_last_segmenter, photo)
        # NHWC convolutions round differently (~1e-7); 15 steps and a decode carry that to ~1e-4 of the maps' scale.
        torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().amax()))
        agreement = np.mean(channels_last_segmenter.segment(photo).labels == tiny_segmenter.segment(photo).labels)
        assert agreement >= 0.999


# -- torch_compile -------------------------------------------------------------------------------


class GraphRecorder:
    """A torch.compile backend that keeps every captured graph and runs it as traced (no code generation).

    Inductor's C++ code generation takes minutes for the tiny model on a small CPU; dynamo's
    capture, guards and graph breaks, which is where EmerDiff's attention processors meet
    torch.compile, are the same with this backend.
    """

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []
        self.calls = 0

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.graphs.append(graph)

        def run(*args):
            self.calls += 1
            return graph.forward(*args)

        return run

    def source_files(self) -> set[str]:
        traces = (node.meta.get("stack_trace") or "" for graph in self.graphs for node in graph.graph.nodes)
        return {line.split('"')[1] for trace in traces for line in trace.splitlines() if line.strip().startswith("File ")}


@pytest.fixture
def recorder(monkeypatch):
    import torch._dynamo

    recorder = GraphRecorder()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model=None, **options: real_compile(model, **options, backend=recorder))
    torch._dynamo.reset()
    yield recorder
    torch._dynamo.reset()


@pytest.fixture
def compiled_segmenter(recorder, tiny_model, tiny_config):
    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=tiny_config.replace(torch_compile="unet+vae"), device="cpu")


def test_compiled_unet_and_vae_give_the_same_labels_without_tracing_the_attention(
    compiled_segmenter, tiny_segmenter, recorder, photos
):
    from torch._dynamo.utils import counters

    counters.clear()
    first = compiled_segmenter.segment(photos["astronaut"])
    assert np.mean(first.labels == tiny_segmenter.segment(photos["astronaut"]).labels) >= 0.999
    files = recorder.source_files()
    assert any(path.endswith("diffusers/models/attention.py") for path in files)  # the transformer blocks
    assert any(path.endswith("diffusers/models/autoencoders/vae.py") for path in files)  # the VAE decoder
    # The processors branch on per-run state; traced, they would guard on the layer and step.
    assert not any("emerdiff" in path for path in files)
    assert not [reason for reason in counters["unimplemented"] if "recompile limit" in reason]

    graphs, calls = len(recorder.graphs), recorder.calls
    second = compiled_segmenter.segment(photos["coffee"])
    assert len(recorder.graphs) == graphs  # a new image of the same size compiles nothing new
    assert recorder.calls > calls
    assert np.mean(second.labels == tiny_segmenter.segment(photos["coffee"]).labels) >= 0.999


def test_a_deep_copy_of_a_compiled_unet_runs_its_own_attention(compiled_segmenter):
    # The slow reference deep-copies the UNet; a copy whose attention still ran the original's
    # modules would silently compute with the original's processors and weights.
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    unet = copy.deepcopy(compiled_segmenter.denoiser.unet)
    unet.set_attn_processor(AttnProcessor2_0())
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    prompt = compiled_segmenter.denoiser.prompt_embedding

    def prediction() -> torch.Tensor:
        with torch.inference_mode():
            return unet(latents, 1, encoder_hidden_states=prompt, return_dict=False)[0]

    before = prediction()
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, Attention):
                module.to_out[0].weight.zero_()
    assert not torch.allclose(prediction(), before)
