"""Generated WebDataset shards and a fast tiny-model config for the labelling job's tests."""

from __future__ import annotations

import pytest
from label_helpers import jpeg

from pipeline.config import LabelJobConfig


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

    def make(inputs, output, **options) -> LabelJobConfig:
        values = dict(model=str(tiny_model), method=fast_config, batch_size=2, rows_per_row_group=2, max_attempts=2)
        values.update(options)
        return LabelJobConfig(inputs=tuple(inputs), output=str(output), **values)

    return make
