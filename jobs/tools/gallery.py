"""A self-contained HTML gallery of a labelling output: what a person looks at first.

Rows are sampled uniformly (reservoir sampling, seeded) from every done shard; each card shows the
photo, a colour overlay of its label map, the low-resolution k-means map, the segment count and the
scores. Error rows are listed with their messages. Everything is inline (data: URIs, inline CSS, no
script), so the file opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import random
from collections import Counter, defaultdict

import numpy as np
from fsspec.core import url_to_fs
from PIL import Image
from tqdm import tqdm

from jobs.visualize import colorize, legend_colour, overlay
from jobs.tools.input_images import InputShard, InputShardError, decoding_options
from emerdiff.config import positive_int_problem
from pipeline.config import option, output_option
from pipeline.decode import SampleError, decode_image
from schemas.classes import UNKNOWN, ClassTable, relabel, segment_lookup
from schemas.labels import STATUS_OK, decode_label_png, error_reason
from schemas.layout import OutputLayout
from schemas.reading import ROW, iter_batches, output_metadata, read_rows

ROW_COLUMNS = ["key", "shard", "width", "height", "labels", "lowres_labels", "num_segments",
               "segments.id", "segments.area", "segments.score"]


@dataclasses.dataclass(frozen=True)
class PreviewConfig:
    output: str = output_option()
    destination: str = option("gallery.html", "HTML file to write (local path or fsspec URL).", name="--out", metavar="FILE")
    num_samples: int = option(48, "Ok rows to show.", name="--n")
    seed: int = option(0, "Seed of the row sample: same seed, same output, same sample.")
    # All error rows are counted; this many are listed.
    max_errors: int = option(200, "Error rows listed with their message.")
    # Keeps the file small.
    thumbnail: int = option(256, "Longest side of each picture in pixels.")
    with_images: bool = option(True, "Do not read the input shards; show the label maps without photos.", name="--no-images")
    clusters: str | None = option(
        None, "Class table folder (`emerdiff name` or `emerdiff cluster`): colour the overlays by class and show the "
              "class names, with a legend.", metavar="DIR")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("num_samples", "thumbnail"):
            if problem := positive_int_problem(name, getattr(self, name)):
                raise ValueError(problem)
        if self.max_errors < 0:
            raise ValueError(f"max_errors must be >= 0, got {self.max_errors}")


@dataclasses.dataclass
class RowSample:
    """What one pass over the light columns found: sampled ok rows, error rows, totals."""

    picked: list[tuple[str, int]]  # (shard name, row index in its data file)
    errors: list[dict]  # key, shard, error of the first max_errors error rows
    ok: int = 0
    failed: int = 0
    reasons: Counter = dataclasses.field(default_factory=Counter)


def write_preview(config: PreviewConfig) -> RowSample:
    """Write the gallery; returns what was sampled and counted."""
    classes = ClassTable(config.clusters, config.storage_options) if config.clusters else None
    sample = sample_rows(config)
    rows = _read_picked(config, sample.picked)
    photos = load_photos(config, [row for _, row in rows]) if config.with_images else {}
    cards = [card_html(row, photos.get((row["shard"], row[ROW])), config.thumbnail, _segment_classes(classes, name, row))
             for name, row in rows]
    page = page_html(config.output, output_metadata(config.output, config.storage_options), sample, cards,
                     legend_html(classes) if classes is not None else "")
    fs, path = url_to_fs(config.destination, **config.storage_options)
    fs.pipe_file(path, page.encode())
    return sample


# -- choosing rows -------------------------------------------------------------------------------------


def sample_rows(config: PreviewConfig) -> RowSample:
    """Reservoir-sample ``num_samples`` ok rows over all done shards, in one pass over light columns."""
    generator = random.Random(config.seed)
    sample = RowSample(picked=[], errors=[])
    rows_before: Counter = Counter()  # rows of the shard in earlier batches: positions are per file
    for shard, batch in iter_batches(config.output, ["key", "status", "error"], config.storage_options):
        columns = (batch.column(name).to_pylist() for name in ("key", "status", "error"))
        for index, (key, status, error) in enumerate(zip(*columns), start=rows_before[shard]):
            if status == STATUS_OK:
                sample.ok += 1
                _reservoir_add(sample.picked, (shard, index), sample.ok, config.num_samples, generator)
                continue
            sample.failed += 1
            sample.reasons[error_reason(error or "")] += 1
            if len(sample.errors) < config.max_errors:
                sample.errors.append({"key": key, "shard": shard, "error": error})
        rows_before[shard] += len(batch)
    sample.picked.sort()
    return sample


def _reservoir_add(reservoir: list, item, seen: int, size: int, generator: random.Random) -> None:
    # Algorithm R: after `seen` items, each is in the reservoir with probability size / seen.
    if len(reservoir) < size:
        reservoir.append(item)
        return
    slot = generator.randrange(seen)
    if slot < size:
        reservoir[slot] = item


def _read_picked(config: PreviewConfig, picked: list[tuple[str, int]]) -> list[tuple[str, dict]]:
    """(shard name, row) of the picked rows, each row with its position in its data file as ``ROW``."""
    by_shard: dict[str, list[int]] = defaultdict(list)
    for shard, index in picked:
        by_shard[shard].append(index)
    return [
        (shard, {**row, ROW: index})
        for shard, indices in by_shard.items()
        for index, row in zip(indices, read_rows(config.output, shard, indices, ROW_COLUMNS, config.storage_options))
    ]


@dataclasses.dataclass(frozen=True)
class SegmentClasses:
    """One row's segments in a class table: segment id -> class, and what to call a class."""

    lookup: np.ndarray  # segment id -> class (see schemas.classes.segment_lookup)
    scores: dict[int, float | None]  # segment id -> the class's score (None for clusters)
    table: ClassTable

    def name(self, segment_id: int) -> str:
        return self.table.class_name(int(self.lookup[segment_id]))


def _segment_classes(table: ClassTable | None, shard: str, row: dict) -> SegmentClasses | None:
    if table is None:
        return None
    ids, classes, scores = table.shard(shard).segments(row[ROW])
    return SegmentClasses(segment_lookup(ids, classes), dict(zip(ids.tolist(), scores.tolist())), table)


# -- photos from the input shards ----------------------------------------------------------------------


def load_photos(config: PreviewConfig, rows: list[dict]) -> dict[tuple[str, int], Image.Image | str]:
    """(input shard URL, row position) -> RGB photo as the labeller saw it, or a message saying why there is none.

    Each shard is streamed once, only up to the last wanted position (``jobs.tools.input_images``).
    """
    extensions, max_pixels = decoding_options(config.output, config.storage_options)
    layout = OutputLayout(config.output, config.storage_options)
    wanted: dict[str, dict[int, str]] = defaultdict(dict)
    for row in rows:
        wanted[row["shard"]][row[ROW]] = row["key"]
    photos: dict[tuple[str, int], Image.Image | str] = {}
    for shard, keys in tqdm(wanted.items(), desc="reading photos", unit="shard", disable=None):
        with InputShard(layout, shard, extensions, config.storage_options) as source:
            found = _photos_of_shard(source, keys, max_pixels)
        photos.update({(shard, index): photo for index, photo in found.items()})
    return photos


def _photos_of_shard(source: InputShard, keys: dict[int, str], max_pixels: int) -> dict[int, Image.Image | str]:
    found: dict[int, Image.Image | str] = {}
    try:
        for index in sorted(keys):
            found[index] = _photo(source.image(index, keys[index]).data, max_pixels)
    except InputShardError as error:  # the shard is missing or changed: no later row of it can be trusted
        found.update({index: f"photo unavailable: {error}" for index in keys if index not in found})
    return found


def _photo(data: bytes, max_pixels: int) -> Image.Image | str:
    try:
        return decode_image(data, max_pixels)
    except SampleError as error:
        return f"photo unavailable: {error}"


# -- pictures ------------------------------------------------------------------------------------------


def thumbnail(picture: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    scale = size / max(picture.size)
    if scale >= 1:
        return picture
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), resample)


def data_uri(picture: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


# -- HTML ----------------------------------------------------------------------------------------------


def card_html(row: dict, photo: Image.Image | str | None, size: int, classes: SegmentClasses | None = None) -> str:
    """One sampled row: photo, overlay (by segment, or by class with ``classes``), low-res map, and its segments."""
    labels = decode_label_png(row["labels"]["bytes"])
    lowres = decode_label_png(row["lowres_labels"]["bytes"])
    shown = labels if classes is None else relabel(labels, classes.lookup, f"row {row['key']!r}")
    unknown = None if classes is None else UNKNOWN
    label_map = thumbnail(colorize(shown, unknown), size, Image.Resampling.NEAREST)
    lowres_map = colorize(lowres).resize(label_map.size, Image.Resampling.NEAREST)
    if isinstance(photo, Image.Image):
        small = thumbnail(photo, size, Image.Resampling.BICUBIC)
        pictures = [("photo", data_uri(small, "JPEG")), ("overlay", data_uri(overlay(small, shown, unknown=unknown), "JPEG"))]
        note = ""
    else:
        pictures = [("label map", data_uri(label_map, "PNG"))]
        note = f'<p class="note">{html.escape(photo or "photos not read (--no-images)")}</p>'
    pictures.append(("low-res map", data_uri(lowres_map, "PNG")))
    segments = sorted(row["segments"] or [], key=lambda segment: -segment["area"])
    scores = [segment["score"] for segment in segments]
    total = max(1, row["width"] * row["height"])
    segment_rows = "".join(
        f"<tr><td>{s['id']}</td><td>{100 * s['area'] / total:.1f}%</td><td>{s['score']:.2f}</td>"
        + ("" if classes is None else f"<td>{html.escape(classes.name(s['id']))}</td><td>{_score(classes.scores.get(s['id']))}</td>")
        + "</tr>"
        for s in segments
    )
    class_header = "" if classes is None else "<th>class</th><th>class score</th>"
    figures = "".join(
        f'<figure><img src="{uri}" alt="{alt}"{"" if alt in ("photo", "overlay") else " class=map"}>'
        f"<figcaption>{alt}</figcaption></figure>"
        for alt, uri in pictures
    )
    mean_score = f"{np.mean(scores):.2f}" if scores else "-"
    return f"""<article class="card">
<div class="pictures">{figures}</div>{note}
<h2>{html.escape(row["key"])}</h2>
<p>{row["num_segments"]} segments &middot; mean score {mean_score} &middot; {row["width"]}&times;{row["height"]}</p>
<details><summary>segments</summary><table><tr><th>id</th><th>area</th><th>score</th>{class_header}</tr>{segment_rows}</table></details>
</article>"""


def _score(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def legend_html(table: ClassTable) -> str:
    """The classes' colours and names, as the overlays show them."""
    ids = [*range(table.num_classes), UNKNOWN]
    items = "".join(
        f'<li><span class="swatch" style="background: rgb{legend_colour(c, UNKNOWN)}"></span>{html.escape(table.class_name(c))}</li>'
        for c in ids
    )
    return f'<section class="legend"><h2>Classes</h2><ul>{items}</ul></section>'


def page_html(output: str, produced: dict | None, sample: RowSample, cards: list[str], legend: str = "") -> str:
    produced = produced or {}
    reasons = "".join(f"<li>{html.escape(reason)}: {count}</li>" for reason, count in sample.reasons.most_common())
    error_rows = "".join(
        f"<tr><td>{html.escape(e['key'])}</td><td>{html.escape(e['shard'])}</td><td>{html.escape(e['error'] or '')}</td></tr>"
        for e in sample.errors
    )
    errors = (
        f"<section><h2>Error rows ({sample.failed})</h2><ul>{reasons}</ul>"
        f"<table class=\"errors\"><tr><th>key</th><th>shard</th><th>message</th></tr>{error_rows}</table>"
        + (f"<p>First {len(sample.errors)} of {sample.failed} listed.</p>" if sample.failed > len(sample.errors) else "")
        + "</section>"
        if sample.failed else "<section><h2>Error rows (0)</h2></section>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<link rel="icon" href="data:,">
<title>EmerDiff preview: {html.escape(output)}</title>
<style>{_CSS}</style></head><body>
<header><h1>EmerDiff preview</h1>
<p>{html.escape(output)} &middot; model <code>{html.escape(str(produced.get("model")))}</code>
&middot; config <code>{html.escape(str(produced.get("config_hash")))}</code>
&middot; {sample.ok} ok rows, {sample.failed} error rows &middot; {len(cards)} sampled</p></header>
{legend}<main class="grid">{"".join(cards)}</main>
{errors}
</body></html>
"""


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 0.75rem; }
.card h2 { font-size: 0.95rem; margin: 0.5rem 0 0.25rem; word-break: break-all; }
.card p { margin: 0.25rem 0; font-size: 0.85rem; }
.pictures { display: flex; gap: 0.4rem; flex-wrap: wrap; }
figure { margin: 0; } figure img { max-width: 130px; height: auto; display: block; }
img.map { image-rendering: pixelated; }
figcaption { font-size: 0.75rem; color: #666; }
.note { color: #a33; }
table { border-collapse: collapse; font-size: 0.8rem; } td, th { padding: 0.1rem 0.5rem; text-align: right; }
table.errors td, table.errors th { text-align: left; border-bottom: 1px solid #eee; }
.legend ul { display: flex; flex-wrap: wrap; gap: 0.3rem 1rem; list-style: none; padding: 0; font-size: 0.85rem; }
.swatch { display: inline-block; width: 0.8rem; height: 0.8rem; margin-right: 0.3rem; vertical-align: middle; }
"""
