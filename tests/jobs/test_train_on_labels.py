"""The training example of docs/tools.md (examples/train_on_labels.py), run on a tiny WebDataset export:
every batch pairs each image crop with its own mask, a per-pixel classifier learns from it, and the
documentation shows the module's code verbatim."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from examples import train_on_labels
from examples.train_on_labels import IGNORE, training_loader
from jobs.cli import main
from label_helpers import write_shards
from output_builder import PALETTE, blocky_labels, segmentation, write_output
from schemas.labels import decode_label_png
from schemas.reading import read_rows

CROP = 16
# (height, width) of the images of each shard; the 12 x 20 one is smaller than a crop, so padded.
SIZES = {"shard-000000": [(24, 32), (20, 28), (12, 20)], "shard-000001": [(32, 24), (24, 24)],
         "shard-000002": [(28, 36), (16, 16), (20, 32)]}
FIRST_INDEX = 100  # red of image i is FIRST_INDEX + i, so that no image pixel is padding's black


def coordinates(index: int, labels: np.ndarray) -> np.ndarray:
    """Red says which image, green and blue the row and column: a crop tells where it came from."""
    rows, cols = np.indices(labels.shape)
    return np.stack([np.full(labels.shape, FIRST_INDEX + index), rows, cols], axis=-1).astype(np.uint8)


def colours(index: int, labels: np.ndarray) -> np.ndarray:
    """Each segment in its own colour: what a per-pixel classifier can learn."""
    return PALETTE[labels]


def webdataset_export(root: Path, paint) -> tuple[list[str], str, dict]:
    """Label maps, input shards painted by ``paint``, the output, and its WebDataset export.

    Returns (the export's shard paths, the output URL, image index -> (shard, row)).
    """
    rows, samples, where, index = {}, {}, {}, 0
    for shard, sizes in SIZES.items():
        rows[shard], samples[f"{shard}.tar"] = [], []
        for row, size in enumerate(sizes):
            labels = blocky_labels(index, shape=size)
            png = io.BytesIO()
            Image.fromarray(paint(index, labels)).save(png, format="PNG")
            samples[f"{shard}.tar"].append({"__key__": f"photo{index}", "png": png.getvalue()})
            rows[shard].append((f"photo{index}", segmentation(labels, {i: [1.0] for i in range(4)})))
            where[index] = (shard, row)
            index += 1
    urls = write_shards(str(root / "in"), samples)
    output = str(root / "out")
    write_output(output, rows, shard_urls=dict(zip(SIZES, urls)))
    assert main(["export", output, "--format", "webdataset", "--out", str(root / "wds"), "--maxcount", "3"]) == 0
    return sorted(str(path) for path in (root / "wds").glob("shard-*.tar")), output, where


def test_every_batch_pairs_each_image_with_its_own_mask(tmp_path):
    urls, output, where = webdataset_export(tmp_path, coordinates)
    seen = []
    for images, masks in training_loader(urls, size=CROP, batch_size=4, num_workers=2):
        assert images.shape[1:] == (3, CROP, CROP) and masks.shape[1:] == (CROP, CROP) and len(images) == len(masks)
        for image, mask in zip(images, masks):
            pixels = torch.round(image * 255).long()
            index, top, left = (int(value) for value in pixels[:, 0, 0])
            index -= FIRST_INDEX
            shard, row = where[index]
            [cell] = read_rows(output, shard, [row], ["labels"])
            labels = decode_label_png(cell["labels"]["bytes"])
            height, width = min(CROP, labels.shape[0] - top), min(CROP, labels.shape[1] - left)
            rows, cols = np.indices((height, width))
            # The crop is the image's own pixels at (top, left) ...
            expected = np.stack([np.full((height, width), FIRST_INDEX + index), top + rows, left + cols])
            assert np.array_equal(pixels[:, :height, :width].numpy(), expected)
            # ... and the mask is the label map of its Parquet row, cut at the same place.
            assert np.array_equal(mask[:height, :width].numpy(), labels[top:top + height, left:left + width])
            # Past the image's edge: black padding, ignored by the loss.
            assert (pixels[:, height:, :] == 0).all() and (pixels[:, :, width:] == 0).all()
            assert (mask[height:, :] == IGNORE).all() and (mask[:, width:] == IGNORE).all()
            seen.append(index)
    assert sorted(seen) == list(range(len(where)))  # every sample once an epoch, across both workers


def test_a_per_pixel_classifier_learns_from_the_export(tmp_path):
    urls, _, _ = webdataset_export(tmp_path, colours)
    torch.manual_seed(0)
    classifier = torch.nn.Conv2d(3, len(PALETTE), kernel_size=1)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.1)
    losses = []
    for _ in range(12):  # epochs of 2 batches: 8 images, 4 a batch
        for images, masks in training_loader(urls, size=CROP, batch_size=4, num_workers=0):
            loss = torch.nn.functional.cross_entropy(classifier(images), masks, ignore_index=IGNORE)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert len(losses) == 24
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_the_documentation_shows_the_example_verbatim():
    doc = (Path(__file__).parents[2] / "docs/tools.md").read_text()
    section = doc.split("\n## Training on the labels\n", 1)[1]
    shown = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert shown == Path(train_on_labels.__file__).read_text()
