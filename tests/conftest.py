"""Fixtures shared by the whole suite. Nothing here touches the network."""

import os

# Before any Hugging Face import: tests must never reach the Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
from label_helpers import jpeg

pytest_plugins = ["fixtures_services"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Path of a tiny random SD-layout model in diffusers format (built once per session)."""
    from emerdiff.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """Path of a tiny random CLIP in transformers format (built once per session)."""
    from emerdiff.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


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


# -- the labelling job: generated shards, a fast tiny-model config and job --------------------------


@pytest.fixture(scope="session")
def photo_jpegs(photos):
    """Three small real photos as JPEG bytes (small so the tiny model stays fast)."""
    return [jpeg(photos[name]) for name in ("astronaut", "coffee", "chelsea")]


@pytest.fixture(scope="session")
def make_samples(photo_jpegs):
    """``make_samples(shard_index, count)``: samples with keys unique across shards, real photos."""

    def make(shard: int, count: int) -> list[dict]:
        return [
            {"__key__": f"s{shard:02d}-{i:03d}", "jpg": photo_jpegs[(shard + i) % len(photo_jpegs)], "txt": b"a caption"}
            for i in range(count)
        ]

    return make


@pytest.fixture(scope="session")
def fast_config(tiny_config):
    """The tiny model with 3 masks and a 4-step denoise from t=61: about 0.4 s per image on a CPU."""
    return tiny_config.replace(num_masks=3, modulation_timestep=61)


@pytest.fixture(scope="session")
def fast_segmenter(tiny_model, fast_config):
    from emerdiff import EmerDiffSegmenter

    return EmerDiffSegmenter.from_pretrained(str(tiny_model), config=fast_config, device="cpu")


@pytest.fixture
def make_job(tiny_model, fast_config):
    """``make_job(inputs, output, **options)``: a LabelJobConfig on the tiny model with small batches."""
    from pipeline.config import LabelJobConfig

    def make(inputs, output, **options) -> LabelJobConfig:
        values = dict(model=str(tiny_model), method=fast_config, batch_size=2, rows_per_row_group=2, max_attempts=2)
        values.update(options)
        return LabelJobConfig(inputs=tuple(inputs), output=str(output), **values)

    return make


@pytest.fixture
def memory_dir():
    """A fresh folder on fsspec's in-memory store, removed afterwards."""
    import uuid

    import fsspec

    root = f"memory:///inputs-{uuid.uuid4().hex[:8]}"  # memory:// lists its paths from "/"
    yield root
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)
