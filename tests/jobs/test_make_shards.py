"""emerdiff make-shards: keys, ground-truth pairing, reproducible tars."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from emerdiff.images import to_rgb
from jobs.cli import main
from jobs.tools.image_shards import assign_keys
from pipeline.sources import ShardStream


def save_image(path: Path, size=(4, 2), orientation: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
        return
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


def save_truth(path: Path, classes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(classes, dtype=np.uint8)).save(path)


def members(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


@pytest.fixture
def image_folder(tmp_path):
    images = tmp_path / "images"
    for name in ("b.jpg", "a.png", "sub/c.d.jpeg", "sub/.hidden.jpg", "notes.txt"):
        if name.endswith("txt"):
            (images / name).write_text("not an image")
        else:
            save_image(images / name)
    return images


def test_folder_to_shards_with_stable_dot_free_keys(image_folder, tmp_path):
    out = tmp_path / "shards"
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", "2"]) == 0
    # Sorted by relative path: a.png, b.jpg, sub/c.d.jpeg; hidden files and non-images are skipped.
    assert sorted(p.name for p in out.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    assert members(out / "shard-000000.tar") == ["a.png", "b.jpg"]
    assert members(out / "shard-000001.tar") == ["sub_c_d.jpg"]
    # The image bytes travel untouched.
    with tarfile.open(out / "shard-000000.tar") as tar:
        assert tar.extractfile("b.jpg").read() == (image_folder / "b.jpg").read_bytes()


def test_same_input_gives_byte_identical_tars(image_folder, tmp_path):
    for name in ("one", "two"):
        assert main(["make-shards", str(image_folder), "--output", str(tmp_path / name)]) == 0
    assert (tmp_path / "one/shard-000000.tar").read_bytes() == (tmp_path / "two/shard-000000.tar").read_bytes()


def test_colliding_keys_are_disambiguated_by_path_hash():
    keys = assign_keys(["a/b.jpg", "a_b.jpg", "c.jpg"])
    assert keys[2] == "c"
    assert keys[0].startswith("a_b-") and keys[1].startswith("a_b-") and keys[0] != keys[1]
    assert all("." not in key for key in keys)
    assert assign_keys(["a/b.jpg", "a_b.jpg", "c.jpg"]) == keys  # stable


def test_glob_and_list_file_sources(image_folder, tmp_path):
    assert main(["make-shards", f"{image_folder}/**/*.jp*g", "--output", str(tmp_path / "glob")]) == 0
    assert members(tmp_path / "glob/shard-000000.tar") == ["b.jpg", "sub_c_d.jpg"]
    listing = image_folder / "list.txt"
    listing.write_text("# chosen order\nsub/c.d.jpeg\n\nb.jpg\n")
    assert main(["make-shards", str(listing), "--output", str(tmp_path / "list")]) == 0
    assert members(tmp_path / "list/shard-000000.tar") == ["sub_c_d.jpg", "b.jpg"]


def test_ground_truth_is_paired_mapped_and_read_back_by_the_labeller(tmp_path):
    images, truth = tmp_path / "images", tmp_path / "truth"
    save_image(images / "x.jpg")
    save_truth(truth / "x.png", [[0, 156, 255, 181], [12, 0, 0, 0]])  # person, sky-other, unlabelled, wood; stop sign
    out = tmp_path / "shards"
    assert main(["make-shards", str(images), "--output", str(out), "--gt", str(truth), "--gt-mapping", "cocostuff27"]) == 0
    [sample] = list(ShardStream(str(out / "shard-000000.tar")))
    assert sample["__key__"] == "x" and {"jpg", "seg.png"} <= set(sample)
    coarse = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
    # person -> 9, sky-other -> 23 (sky), 255 stays, wood -> 24 (solid), stop sign -> 8 (outdoor)
    assert coarse.tolist() == [[9, 23, 255, 24], [8, 9, 9, 9]]


def test_ground_truth_follows_the_image_exif_orientation(tmp_path):
    images, truth = tmp_path / "images", tmp_path / "truth"
    save_image(images / "turned.jpg", size=(4, 2), orientation=6)  # shown rotated 90 degrees clockwise
    classes = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint8)
    save_truth(truth / "turned.png", classes)
    assert main(["make-shards", str(images), "--output", str(tmp_path / "out"), "--gt", str(truth)]) == 0
    [sample] = list(ShardStream(str(tmp_path / "out/shard-000000.tar")))
    stored = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
    assert stored.tolist() == np.rot90(classes, k=-1).tolist()
    # The labeller's view of the image has the same size as the stored ground truth.
    assert to_rgb(Image.open(io.BytesIO(sample["jpg"]))).size == (stored.shape[1], stored.shape[0])


def test_missing_ground_truth_is_an_actionable_error(tmp_path, caplog):
    images, truth = tmp_path / "images", tmp_path / "truth"
    save_image(images / "x.jpg")
    save_image(images / "y.jpg")
    save_truth(truth / "x.png", np.zeros((2, 4)))
    assert main(["make-shards", str(images), "--output", str(tmp_path / "out"), "--gt", str(truth)]) == 2
    assert "1 of 2 images have no ground-truth PNG" in caplog.text and "y.png" in caplog.text
    assert not (tmp_path / "out").exists()  # nothing written before the check


def test_ground_truth_of_another_size_is_refused(tmp_path, caplog):
    images, truth = tmp_path / "images", tmp_path / "truth"
    save_image(images / "x.jpg", size=(4, 2))
    save_truth(truth / "x.png", np.zeros((3, 3)))
    assert main(["make-shards", str(images), "--output", str(tmp_path / "out"), "--gt", str(truth)]) == 2
    assert "is 3x3 but its image is 4x2" in caplog.text


def test_a_rerun_over_identical_shards_succeeds_without_writing(image_folder, tmp_path, caplog):
    out = tmp_path / "out"
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", "2"]) == 0
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    caplog.set_level("INFO")
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", "2"]) == 0
    assert "already holds these 2 shard(s), byte for byte" in caplog.text
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before


@pytest.mark.parametrize("change", ["an image", "the shard size", "an extra shard"])
def test_different_existing_shards_are_refused_unless_overwrite(image_folder, tmp_path, caplog, change):
    out = tmp_path / "out"
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", "2"]) == 0
    maxcount = "2"
    if change == "an image":
        save_image(image_folder / "b.jpg", size=(5, 3))
    elif change == "the shard size":
        maxcount = "3"
    else:
        (out / "shard-000002.tar").write_bytes((out / "shard-000001.tar").read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    caplog.clear()
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", maxcount]) == 2
    assert "that are not the ones these images make" in caplog.text and "--overwrite" in caplog.text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    assert main(["make-shards", str(image_folder), "--output", str(out), "--maxcount", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"shard-00000{i}.tar" for i in range(3)]


def test_bad_arguments_exit_2_with_a_message(tmp_path, caplog):
    assert main(["make-shards", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out")]) == 2
    assert "neither a folder, a glob nor a list file" in caplog.text
    assert main(["make-shards", str(tmp_path), "--output", str(tmp_path / "out"), "--maxcount", "0"]) == 2
    assert "maxcount must be a positive integer" in caplog.text
