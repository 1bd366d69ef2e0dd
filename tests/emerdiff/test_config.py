import json

import pytest

from emerdiff import EmerDiffConfig


def test_defaults_are_the_authors_settings():
    config = EmerDiffConfig()
    assert (config.num_masks, config.resolution, config.feature_timestep, config.modulation_timestep) == (25, 512, 0, 281)
    assert (config.feature_samples, config.kmeans_restarts, config.sampler) == (100, 100, "ddpm_inversion")
    assert (config.modulation_strength, config.num_inference_steps, config.blur_kernel_size, config.blur_sigma) == (10.0, 50, 3, 0.8)
    assert config.feature_layer == "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    assert config.modulation_layer == "up_blocks.1.attentions.2.transformer_blocks.0.attn2"
    assert config.attention_injection is True


def test_round_trips_through_dict_json_and_yaml(tmp_path):
    config = EmerDiffConfig(num_masks=12, seed=7, attention_injection=False)
    assert EmerDiffConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    (tmp_path / "c.yaml").write_text("num_masks: 12\nseed: 7\nattention_injection: false\n")
    assert EmerDiffConfig.from_file(tmp_path / "c.yaml") == config
    (tmp_path / "c.json").write_text(json.dumps({"num_masks": 12, "seed": 7, "attention_injection": False}))
    assert EmerDiffConfig.from_file(tmp_path / "c.json") == config


def test_hash_is_stable_changes_with_results_and_ignores_execution_fields():
    base = EmerDiffConfig()
    assert base.config_hash == EmerDiffConfig().config_hash
    assert len(base.config_hash) == 16
    assert base.replace(seed=1).config_hash != base.config_hash
    assert base.replace(modulation_strength=5.0).config_hash != base.config_hash
    for field, value in (("feature_samples", 10), ("kmeans_restarts", 10)):
        assert base.replace(**{field: value}).config_hash != base.config_hash
    assert base.replace(chunk_size=4).config_hash == base.config_hash


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"num_masks": 0}, "num_masks must be a positive integer"),
        ({"feature_samples": 0}, "feature_samples must be a positive integer"),
        ({"kmeans_restarts": 1.5}, "kmeans_restarts must be a positive integer"),
        ({"sampler": "ddim"}, r"sampler must be one of \['ddpm_inversion'\], got 'ddim'"),
        ({"resolution": 500}, "multiple of 64"),
        ({"modulation_timestep": 1000}, "modulation_timestep must be an integer timestep in 0..999"),
        ({"blur_kernel_size": 4}, "blur_kernel_size must be odd"),
        ({"blur_sigma": 0}, "blur_sigma must be > 0"),
        ({"chunk_size": 3}, "chunk_size must be an even integer"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"attention_injection": "yes"}, "attention_injection must be true or false"),
    ],
)
def test_bad_values_are_named_in_the_error(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        EmerDiffConfig(**changes)


def test_unknown_fields_are_refused_with_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown EmerDiffConfig field\(s\) \['num_mask'\].*'num_masks'"):
        EmerDiffConfig.from_dict({"num_mask": 3})
