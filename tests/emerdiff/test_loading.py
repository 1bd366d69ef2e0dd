"""Model loading: the real from_pretrained path on a saved tiny model, and errors that teach."""

import shutil

import pytest
import torch

from emerdiff import EmerDiffSegmenter, ModelLoadError


def test_loads_a_diffusers_folder_on_cpu_in_float32_by_default(tiny_segmenter, tiny_model):
    assert tiny_segmenter.device == torch.device("cpu")
    assert tiny_segmenter.dtype == torch.float32
    assert next(tiny_segmenter.denoiser.unet.parameters()).dtype == torch.float32
    info = tiny_segmenter.model_info
    assert info["model"] == str(tiny_model) and info["dtype"] == "float32" and len(info["weights_sha256"]) == 64


def test_weights_hash_changes_with_the_weights(tiny_model, tiny_config, tmp_path):
    from emerdiff.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    first = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=tiny_config, device="cpu")
    second = EmerDiffSegmenter.from_pretrained(str(other), config=tiny_config, device="cpu")
    assert first.model_info["weights_sha256"] != second.model_info["weights_sha256"]


def test_a_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing file or folder nor a Hub id.*diffusers folder"):
        EmerDiffSegmenter.from_pretrained(str(tmp_path / "no-such-model"), device="cpu")


def test_an_unreachable_hub_id_is_one_clear_error():
    # HF_HUB_OFFLINE=1 (conftest) and an empty cache: the Hub cannot be reached.
    with pytest.raises(ModelLoadError, match="(?s)Could not load Stable Diffusion from 'someone/not-cached'.*HF_HUB_OFFLINE"):
        EmerDiffSegmenter.from_pretrained("someone/not-cached", device="cpu")


def test_an_incomplete_folder_is_one_clear_error(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match=r"broken' is not a complete diffusers folder: it lacks vae/"):
        EmerDiffSegmenter.from_pretrained(str(broken), device="cpu")


def test_pickle_checkpoints_need_an_explicit_opt_in(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, checkpoint)
    with pytest.raises(ModelLoadError, match="pickle checkpoint, which can run arbitrary code.*allow_pickle=True"):
        EmerDiffSegmenter.from_pretrained(str(checkpoint), device="cpu")


def test_a_folder_with_only_pickle_weights_is_refused_unless_allowed(tiny_model, tiny_config, tmp_path):
    from diffusers import UNet2DConditionModel

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    unet = UNet2DConditionModel.from_pretrained(pickled, subfolder="unet")
    (pickled / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(pickled / "unet", safe_serialization=False)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        EmerDiffSegmenter.from_pretrained(str(pickled), config=tiny_config, device="cpu")
    allowed = EmerDiffSegmenter.from_pretrained(str(pickled), config=tiny_config, device="cpu", allow_pickle=True)
    assert allowed.model_info["weights_sha256"]


def test_other_files_are_not_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="expected a .safetensors file or a diffusers folder"):
        EmerDiffSegmenter.from_pretrained(str(tmp_path / "notes.txt"), device="cpu")


def test_urls_point_to_the_commands_that_fetch_them():
    with pytest.raises(ModelLoadError, match="pass the URL as --model to the `emerdiff` commands"):
        EmerDiffSegmenter.from_pretrained("s3://bucket/models/sd15", device="cpu")


def test_an_unknown_dtype_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float16', 'float32'\]"):
        EmerDiffSegmenter.from_pretrained(str(tiny_model), device="cpu", dtype="float8")


def test_num_masks_larger_than_the_token_grid_is_a_clear_error(tiny_model, tiny_config, photos):
    segmenter = EmerDiffSegmenter.from_pretrained(str(tiny_model), config=tiny_config.replace(num_masks=17), device="cpu")
    with pytest.raises(ValueError, match=r"num_masks=17 must be between 1 and the number of feature tokens \(16\)"):
        segmenter.segment(photos["coffee"])
