"""Fixtures shared by the whole suite. Nothing here touches the network."""

import os

# Before any Hugging Face import: tests must never reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

pytest_plugins = ["fixtures_services"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of a tiny random SD-layout model in diffusers format (built once per session)."""
    from emerdiff.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_config():
    """A config that runs the whole method on the tiny model in well under a second per image."""
    from emerdiff import EmerDiffConfig
    from emerdiff.tiny import TINY_RESOLUTION

    return EmerDiffConfig(num_masks=4, resolution=TINY_RESOLUTION, num_inference_steps=50, seed=0)


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_model, tiny_config):
    from emerdiff import EmerDiffSegmenter

    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=tiny_config, device="cpu")


@pytest.fixture(scope="session")
def photos():
    """A few real photographs (public domain, bundled with scikit-image) as HxWx3 uint8 arrays."""
    from skimage import data

    return {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
