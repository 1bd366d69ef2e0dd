"""emerdiff preview: the HTML gallery, checked as text and in a real headless Chromium."""

import base64
import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from label_helpers import write_shards

from jobs.cli import main
from output_builder import segmentation, write_output
from schemas.classes import UNKNOWN, ClassTableWriter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def block_segmentation(seed: int):
    """A 64 x 96 map of 16-pixel blocks with 4 segment ids (the photos' size after resizing)."""
    blocks = np.random.default_rng(seed).integers(0, 4, (4, 6))
    labels = np.kron(blocks, np.ones((16, 16), dtype=int))
    return segmentation(labels, {i: np.eye(4)[i] for i in range(4)}, score=0.8)


@pytest.fixture(scope="module")
def photo_output(tmp_path_factory, photos):
    """Input shards of three real photos, and an output with a segmentation of each (+1 error row)."""
    root = tmp_path_factory.mktemp("preview")
    folder = root / "photos"
    folder.mkdir()
    for name, pixels in photos.items():
        Image.fromarray(pixels).resize((96, 64)).save(folder / f"{name}.jpg")
    assert main(["make-shards", str(folder), "--output", str(root / "shards"), "--maxcount", "2"]) == 0
    shards = {"shard-000000": ["astronaut", "chelsea"], "shard-000001": ["coffee"]}
    rows = {name: [(key, block_segmentation(index)) for index, key in enumerate(keys)] for name, keys in shards.items()}
    rows["shard-000001"].append(("lost", "missing image member: looked for .jpg; sample has .txt"))
    output = str(root / "out")
    write_output(output, rows, shard_urls={name: str(root / f"shards/{name}.tar") for name in shards})
    return output


def gallery(photo_output, tmp_path, *flags) -> str:
    page = tmp_path / "gallery.html"
    assert main(["preview", photo_output, "--out", str(page), *flags]) == 0
    return page


def test_gallery_shows_sampled_rows_and_error_messages(photo_output, tmp_path):
    html = gallery(photo_output, tmp_path, "--n", "2").read_text()
    assert html.count('<article class="card">') == 2
    assert "missing image member: looked for .jpg; sample has .txt" in html
    assert "3 ok rows, 1 error rows" in html
    # Self-contained: every picture inline, no link or script to fetch.
    assert re.findall(r'<img src="([a-z]+):', html) == ["data"] * 6  # photo, overlay, low-res map per card
    assert not re.search(r"(src|href)=\"(https?:|//)", html) and "<script" not in html


def test_same_seed_same_sample(photo_output, tmp_path):
    def sampled(name: str) -> list[str]:
        (tmp_path / name).mkdir()
        return re.findall(r"<h2>(\w+)</h2>", gallery(photo_output, tmp_path / name, "--n", "2").read_text())

    first = sampled("a")
    assert len(first) == 2 and sampled("b") == first


def test_without_images_the_shards_are_not_read(photo_output, tmp_path):
    html = gallery(photo_output, tmp_path, "--no-images").read_text()
    assert html.count('<article class="card">') == 3
    assert "photos not read (--no-images)" in html and 'alt="photo"' not in html


def test_photos_of_a_missing_shard_are_reported_not_fatal(tmp_path, small_output):
    url, _ = small_output  # its rows name input shards that do not exist
    html = gallery(url, tmp_path, "--n", "3").read_text()
    assert html.count('<article class="card">') == 3
    assert "photo unavailable: cannot read the image of row" in html and "cannot open shard" in html


def test_each_row_shows_its_own_photo_when_a_key_heads_two_samples(tmp_path):
    # Shard: x (red), y (green), x (blue); row i is sample i, whatever the keys.
    colours = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}
    samples = [{"__key__": key, "png": png_bytes(colours[index])} for index, key in enumerate("xyx")]
    [url] = write_shards(str(tmp_path / "in"), {"shard-000000.tar": samples})
    rows = [(key, block_segmentation(index)) for index, key in enumerate("xyx")]
    write_output(str(tmp_path / "out"), {"shard-000000": rows}, shard_urls={"shard-000000": url})
    html = gallery(str(tmp_path / "out"), tmp_path, "--n", "3").read_text()
    photos = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)" alt="photo"', html)
    means = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))).reshape(-1, 3).mean(axis=0) for data in photos]
    assert [int(np.argmax(mean)) for mean in means] == [0, 1, 2]  # red, green, blue: never the first x twice


def test_a_named_class_table_colours_by_class_and_shows_the_names(photo_output, tmp_path):
    writer = ClassTableWriter(str(tmp_path / "named"), None, num_classes=2)
    for shard, keys in {"shard-000000": 2, "shard-000001": 1}.items():
        rows = np.repeat(np.arange(keys), 4)
        writer.write_shard(shard, rows=rows, keys=["k"] * len(rows), segment_ids=np.tile(np.arange(4), keys),
                           classes=np.tile([0, 1, UNKNOWN, 1], keys), scores=np.full(len(rows), 0.75))
    writer.close("names", "out", ["sky & sea", "tree"])
    html = gallery(photo_output, tmp_path, "--clusters", str(tmp_path / "named")).read_text()
    legend = re.search(r'<section class="legend">(.*?)</section>', html).group(1)
    assert re.findall(r"</span>([^<]+)</li>", legend) == ["sky &amp; sea", "tree", "unknown"]
    # Every card's segment table names each segment's class, with its score.
    cells = re.findall(r"<td>[\d.]+%</td><td>[\d.]+</td><td>([^<]+)</td><td>([^<]+)</td></tr>", html)
    assert {name for name, _ in cells} == {"sky &amp; sea", "tree", "unknown"} and {score for _, score in cells} == {"0.75"}


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (96, 64), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_overlay_blends_the_photo_with_the_label_colours():
    from jobs.visualize import overlay, palette

    photo = Image.new("RGB", (2, 1), (0, 0, 0))
    blended = np.asarray(overlay(photo, np.array([[0, 1]]), alpha=0.5)).astype(float)
    # Half black photo, half label colour: each pixel is its colour halved (PIL rounds).
    assert np.abs(blended[0] - palette(2) / 2).max() <= 1
    assert not np.array_equal(palette(2)[0], palette(2)[1])


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_gallery_in_headless_chromium(photo_output, tmp_path):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    page_file = gallery(photo_output, tmp_path, "--n", "3")
    console_errors, page_errors, requests = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri(), wait_until="load")
            loaded = page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
            cards = page.locator("article.card").count()
            screenshot = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert cards == 3
    assert loaded == 9  # photo, overlay and low-res map of each card, all decoded
    assert console_errors == [] and page_errors == []
    assert [url for url in requests if not url.startswith(("file:", "data:"))] == []  # works offline
    assert Image.open(io.BytesIO(screenshot)).size[0] > 0
