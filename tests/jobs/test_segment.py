"""`emerdiff segment`: label PNG, overlay and JSON per image, and usage errors that teach."""

import json

import numpy as np
from PIL import Image

from jobs.cli import run_module
from pipeline.exit_status import ExitStatus


def test_writes_labels_overlay_and_json_for_a_real_photo(tiny_model, tmp_path, photos, capsys):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(photos["astronaut"]).save(photo)
    out = tmp_path / "out"
    code = run_module("jobs.segment", [str(photo), "--out", str(out), "--model", str(tiny_model),
                                       "--device", "cpu", "--num-masks", "4", "--resolution", "128"])
    assert code == 0
    labels = np.asarray(Image.open(out / "astronaut.labels.png"))
    overlay = Image.open(out / "astronaut.overlay.png")
    summary = json.loads((out / "astronaut.json").read_text())
    assert labels.shape == (512, 512) and labels.max() < 4
    assert overlay.size == (512, 512) and overlay.mode == "RGB"
    assert summary["config"]["num_masks"] == 4 and summary["config"]["resolution"] == 128
    assert summary["num_segments"] == len(np.unique(labels)) == len(summary["segments"])
    assert sum(s["area"] for s in summary["segments"]) == 512 * 512


def test_a_bad_flag_value_is_a_usage_error(tiny_model, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    code = run_module("jobs.segment", [str(photo), "--out", str(tmp_path), "--model", str(tiny_model), "--resolution", "100"])
    assert code == 2
    assert "resolution must be a multiple of 64" in capsys.readouterr().err


def test_a_missing_image_is_a_usage_error(tmp_path, capsys):
    code = run_module("jobs.segment", [str(tmp_path / "nope.jpg"), "--out", str(tmp_path), "--model", "tiny"])
    assert code == 2
    assert "no such image file(s)" in capsys.readouterr().err


def test_a_model_that_cannot_load_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    code = run_module("jobs.segment", [str(photo), "--out", str(tmp_path), "--model", str(tmp_path / "missing")])
    assert code == ExitStatus.FAILED
    assert "neither an existing file or folder nor a Hub id" in capsys.readouterr().err


def test_with_clip_and_classes_every_segment_is_named(tiny_model, tiny_clip, tmp_path, photos):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(photos["astronaut"]).resize((96, 64)).save(photo)
    out = tmp_path / "out"
    code = run_module("jobs.segment", [str(photo), "--out", str(out), "--model", str(tiny_model), "--device", "cpu",
                                       "--num-masks", "4", "--resolution", "128", "--clip-model", str(tiny_clip),
                                       "--clip-resolution", "64", "--classes", "cat,sofa,wall"])
    assert code == 0
    labels = np.asarray(Image.open(out / "astronaut.labels.png"))
    classes = np.asarray(Image.open(out / "astronaut.classes.png"))
    summary = json.loads((out / "astronaut.json").read_text())
    assert summary["classes"] == ["cat", "sofa", "wall"] and summary["clip"]["clip_resolution"] == 64
    names = {segment["id"]: (segment["class"], segment["class_name"]) for segment in summary["segments"]}
    assert all(name == summary["classes"][class_id] for class_id, name in names.values())
    # The class map is the label map seen through each segment's class.
    assert np.array_equal(classes, np.vectorize(lambda s: names[int(s)][0])(labels))
    overlay = Image.open(out / "astronaut.overlay.png")
    shown = len(np.unique(classes))
    assert overlay.height > 64 + 14 * shown - 1  # the photo, then one legend row per class shown


def test_classes_without_a_clip_model_is_a_usage_error(tiny_model, tmp_path, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    code = run_module("jobs.segment", [str(photo), "--out", str(tmp_path), "--model", str(tiny_model), "--classes", "cat"])
    assert code == ExitStatus.USAGE
    assert "both --clip-model and --classes" in capsys.readouterr().err


def test_a_model_url_is_copied_into_the_model_cache_and_loaded_from_there(tiny_model, tmp_path, photos, s3_bucket,
                                                                         s3_storage_options, monkeypatch):
    import s3fs

    s3fs.S3FileSystem(**s3_storage_options).put(str(tiny_model), f"{s3_bucket}/models/tiny", recursive=True)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMERDIFF_MODEL_CACHE", str(cache))
    photo = tmp_path / "coffee.jpg"
    Image.fromarray(photos["coffee"]).save(photo)
    code = run_module("jobs.segment", [
        str(photo), "--out", str(tmp_path / "out"), "--model", f"{s3_bucket}/models/tiny",
        "--storage-options", json.dumps(s3_storage_options),
        "--device", "cpu", "--num-masks", "2", "--resolution", "128", "--feature-samples", "2"])
    assert code == 0
    (copy,) = cache.iterdir()
    assert sorted(p.relative_to(copy) for p in copy.rglob("*") if p.is_file()) == sorted(
        p.relative_to(tiny_model) for p in tiny_model.rglob("*") if p.is_file())
    labels = np.asarray(Image.open(tmp_path / "out" / "coffee.labels.png"))
    assert labels.shape == photos["coffee"].shape[:2] and labels.max() < 2
    assert json.loads((tmp_path / "out" / "coffee.json").read_text())["model"] == str(copy)


def test_a_model_url_without_files_is_a_usage_error(tmp_path, s3_bucket, s3_storage_options, capsys):
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    code = run_module("jobs.segment", [str(photo), "--out", str(tmp_path), "--model", f"{s3_bucket}/models/none",
                                       "--storage-options", json.dumps(s3_storage_options)])
    assert code == 2
    assert "holds no files; expected a diffusers folder" in capsys.readouterr().err
