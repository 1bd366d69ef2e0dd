"""Images (and optional ground truth) -> WebDataset shards with stable keys and byte-identical tars.

A sample is ``<key>.<ext>`` holding the image file's own bytes (never re-encoded) and, with ground
truth, ``<key>.seg.png``: a single-channel PNG of class ids (255 = ignore) aligned with the image as
the labeller sees it. Keys come from the image's path relative to the source root, so the same
input always gives the same keys; see ``assign_keys``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import math
import posixpath
import re
from collections import Counter
from collections.abc import Iterator

import fsspec
import numpy as np
from fsspec.core import url_to_fs
from PIL import Image
from tqdm import tqdm
from webdataset import TarWriter

from jobs.tools.cocostuff import GT_MAPPINGS
from emerdiff.config import positive_int_problem
from pipeline.config import option
from schemas.shards import shard_file_glob, shard_file_name
from schemas.urls import glob_root, has_scheme, is_glob, read_list_file

# What `emerdiff label` reads by default (LabelJobConfig.image_extensions).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Fixed tar metadata: with it, the same samples always give the same bytes.
TAR_OPTIONS = dict(mtime=0, user="emerdiff", group="emerdiff", mode=0o444, format="PAX_FORMAT", encoder=False)


@dataclasses.dataclass(frozen=True)
class ShardsConfig:
    # A list file's entries are relative to the list's folder, or absolute on the same store.
    source: str = option(
        help="Folder (searched recursively), glob ('photos/**/*.jpg') or list file of images (local path or fsspec URL).",
        name="source", metavar="SRC")
    output: str = option(help="Folder the shards are written to.", metavar="DIR")
    # A shard is the labelling job's unit of work, retry and output file.
    maxcount: int = option(1000, "Samples per shard.")
    ground_truth: str | None = option(None, "Folder of ground-truth label PNGs named like the images.", name="--gt", metavar="DIR")
    gt_mapping: str | None = option(
        None, "Map the ground truth's fine ids to coarse classes, e.g. COCO-Stuff's 182 labels to its 27 classes.",
        choices=sorted(GT_MAPPINGS))
    prefix: str = option("shard", "Shard names are PREFIX-000000.tar, ...")
    overwrite: bool = option(
        False, "Replace shards with the same prefix already in --output. Without it, shards that are byte for byte "
               "what these images make are kept (a rerun succeeds) and any others are refused.")
    storage_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if problem := positive_int_problem("maxcount", self.maxcount):
            raise ValueError(problem)
        if self.gt_mapping is not None and self.gt_mapping not in GT_MAPPINGS:
            raise ValueError(f"gt_mapping must be one of {sorted(GT_MAPPINGS)}, got {self.gt_mapping!r}")
        if self.gt_mapping is not None and self.ground_truth is None:
            raise ValueError("gt_mapping needs ground truth to map; pass the ground-truth folder as well")
        if not self.prefix or _KEY_UNSAFE.search(self.prefix):
            raise ValueError(f"prefix must be letters, digits, '_' or '-', got {self.prefix!r}")


@dataclasses.dataclass(frozen=True)
class SourceImage:
    path: str  # on the source filesystem, without protocol
    relative: str  # path below the source root: what the key and the ground-truth name come from


@dataclasses.dataclass(frozen=True)
class ShardsSummary:
    samples: int
    with_ground_truth: int
    shards: tuple[str, ...]
    unchanged: bool = False  # the output already held exactly these shards; nothing was written


def make_shards(config: ShardsConfig) -> ShardsSummary:
    """Write the shards; raises ValueError (before writing anything) on unusable input.

    When ``--output`` already holds shards of this prefix, they are left as they are if they are
    byte for byte the ones these images make (a rerun of the same command succeeds without writing),
    replaced with ``--overwrite``, and refused otherwise.
    """
    source_fs, source_path = url_to_fs(config.source, **config.storage_options)
    images = list_images(source_fs, source_path)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found at {config.source}")
    keys = assign_keys([image.relative for image in images])
    truth_fs, truth = _pair_ground_truth(images, keys, config) if config.ground_truth else (None, {})

    output_fs, output_path = url_to_fs(config.output, **config.storage_options)
    table = GT_MAPPINGS[config.gt_mapping][0] if config.gt_mapping else None
    samples = _samples(source_fs, images, keys, truth_fs, truth, table)
    names = [shard_file_name(config.prefix, index) for index in range(math.ceil(len(images) / config.maxcount))]
    existing = output_fs.glob(f"{output_path}/{shard_file_glob(config.prefix)}")
    unchanged = bool(existing) and not config.overwrite
    with tqdm(samples, total=len(images), unit="img", desc="make-shards", disable=None) as bar:
        if unchanged:
            bar.set_description("make-shards (comparing)")
            _check_identical(output_fs, existing, names, config, iter(bar))
        else:
            if existing:
                output_fs.rm(existing)
            output_fs.makedirs(output_path, exist_ok=True)
            _write_shards(output_fs, output_path, names, config, iter(bar))
    shards = tuple(output_fs.unstrip_protocol(f"{output_path}/{name}") for name in names)
    return ShardsSummary(samples=len(images), with_ground_truth=len(truth), shards=shards, unchanged=unchanged)


# -- finding the input -----------------------------------------------------------------------------


def list_images(fs: fsspec.AbstractFileSystem, source: str) -> list[SourceImage]:
    """The images a source names: a folder, a glob or a list file (in the list's order, else sorted)."""
    if is_glob(source):
        root = glob_root(source)
        paths = sorted(p for p in fs.glob(source) if _is_image(p))
        return [SourceImage(p, _relative(p, root)) for p in paths]
    if fs.isdir(source):
        paths = sorted(p for p in fs.find(source) if _is_image(p))
        return [SourceImage(p, _relative(p, source)) for p in paths]
    if fs.isfile(source):
        return _images_from_list(fs, source)
    raise ValueError(f"source {source!r} is neither a folder, a glob nor a list file")


def _images_from_list(fs: fsspec.AbstractFileSystem, list_path: str) -> list[SourceImage]:
    folder = posixpath.dirname(list_path)
    entries = read_list_file(fs.unstrip_protocol(list_path), fs.storage_options, what="image list", flag="SRC",
                             entries="image paths")
    paths = [_resolve_entry(fs, folder, entry) for entry in entries]
    repeated = [path for path, count in Counter(paths).items() if count > 1]
    if repeated:
        raise ValueError(f"list file {list_path} names {len(repeated)} image(s) twice, e.g. {repeated[0]}")
    missing = [path for path in paths if not fs.isfile(path)]
    if missing:
        raise ValueError(f"list file {list_path}: {len(missing)} listed image(s) do not exist, e.g. {missing[0]}")
    root = posixpath.commonpath(paths) if len(paths) > 1 else posixpath.dirname(paths[0])
    return [SourceImage(p, _relative(p, root)) for p in paths]


def _resolve_entry(fs: fsspec.AbstractFileSystem, folder: str, entry: str) -> str:
    if has_scheme(entry):
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if entry.split("://", 1)[0] not in protocols:
            raise ValueError(f"list entry {entry!r} is on another store than the list file ({protocols[0]}://)")
        return fs._strip_protocol(entry)
    return posixpath.normpath(entry if entry.startswith("/") else posixpath.join(folder, entry))


def _is_image(path: str) -> bool:
    name = posixpath.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1:] if root and path.startswith(root + "/") else path.lstrip("/")


# -- keys ------------------------------------------------------------------------------------------


def assign_keys(relatives: list[str]) -> list[str]:
    """One WebDataset key per relative path: dot-free, unique, and the same for the same path.

    The path without its extension, with every run of characters other than letters, digits, '_'
    and '-' replaced by '_' ('a/b.c.jpg' -> 'a_b_c'). Paths that would share a key all get the
    first 8 hex digits of their path's SHA-1 appended, so no key depends on which other files exist
    beyond its own collisions.
    """
    plain = [_KEY_UNSAFE.sub("_", posixpath.splitext(relative)[0]) for relative in relatives]
    counts = Counter(plain)
    keys = [
        f"{key}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}" if counts[key] > 1 else key
        for key, relative in zip(plain, relatives)
    ]
    if len(set(keys)) != len(keys):
        clash = next(key for key, count in Counter(keys).items() if count > 1)
        raise ValueError(f"two images map to the key {clash!r} even after disambiguation; rename one of them")
    return keys


# -- ground truth ----------------------------------------------------------------------------------


def _pair_ground_truth(
    images: list[SourceImage], keys: list[str], config: ShardsConfig
) -> tuple[fsspec.AbstractFileSystem, dict[str, str]]:
    """The ground truth's filesystem and key -> path; raises ValueError naming images that have none."""
    fs, root = url_to_fs(config.ground_truth, **config.storage_options)
    if not fs.isdir(root):
        raise ValueError(f"ground-truth folder {config.ground_truth} does not exist")
    by_stem = {
        posixpath.splitext(_relative(path, root))[0]: path
        for path in fs.find(root)
        if path.lower().endswith(".png")
    }
    pairs = {key: by_stem.get(posixpath.splitext(image.relative)[0]) for image, key in zip(images, keys)}
    missing = [image.relative for image, key in zip(images, keys) if pairs[key] is None]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(images)} images have no ground-truth PNG of the same relative path and "
            f"stem under {config.ground_truth}, e.g. {missing[0]!r} (looked for "
            f"{posixpath.splitext(missing[0])[0]}.png)"
        )
    return fs, pairs


def ground_truth_png(truth: bytes, image: bytes, table: np.ndarray | None, name: str) -> bytes:
    """The sample's ``seg.png``: class ids as 8-bit grey, mapped and oriented like the image.

    Ground truth is drawn on the stored pixels (as COCO's and ADE20K's are) while the labeller
    applies the image's EXIF orientation, so the same orientation is applied here.
    """
    with Image.open(io.BytesIO(truth)) as label_image:
        classes = np.asarray(label_image)
    if classes.ndim != 2:
        raise ValueError(f"ground truth {name} has shape {classes.shape}; expected one channel of class ids")
    if classes.size and int(classes.max()) > 255:
        raise ValueError(f"ground truth {name} holds class id {int(classes.max())}; at most 255 fit (255 = ignore)")
    classes = classes.astype(np.uint8)
    if table is not None:
        classes = table[classes]
    with Image.open(io.BytesIO(image)) as picture:
        size, orientation = picture.size, picture.getexif().get(0x0112, 1)
    if (classes.shape[1], classes.shape[0]) != size:
        raise ValueError(
            f"ground truth {name} is {classes.shape[1]}x{classes.shape[0]} but its image is {size[0]}x{size[1]}"
        )
    oriented = _orient(Image.fromarray(classes, mode="L"), orientation)
    buffer = io.BytesIO()
    oriented.save(buffer, format="PNG")
    return buffer.getvalue()


def _orient(label_image: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return label_image.transpose(method) if method is not None else label_image


# -- writing ---------------------------------------------------------------------------------------


def _samples(fs, images, keys, truth_fs, truth, table) -> Iterator[dict]:
    for image, key in zip(images, keys):
        data = fs.cat_file(image.path)
        sample = {"__key__": key, _extension(image.path): data}
        if key in truth:
            sample["seg.png"] = ground_truth_png(truth_fs.cat_file(truth[key]), data, table, truth[key])
        yield sample


def _extension(path: str) -> str:
    extension = posixpath.splitext(path)[1].lower().lstrip(".")
    return "jpg" if extension == "jpeg" else extension


def _write_shards(fs, output: str, names: list[str], config: ShardsConfig, samples: Iterator[dict]) -> None:
    for name in names:
        # A store uploads the object on close, so readers never see half a shard there.
        with fs.open(f"{output}/{name}", "wb") as handle:
            _write_tar(handle, itertools.islice(samples, config.maxcount))


def _check_identical(fs, existing: list[str], names: list[str], config: ShardsConfig, samples: Iterator[dict]) -> None:
    """Raise ValueError unless ``existing`` are exactly the shards ``names`` that ``samples`` make."""
    by_name = {posixpath.basename(path): path for path in existing}
    difference = None
    if sorted(by_name) != names:
        difference = f"it holds {len(by_name)} shard(s) of that name, these images make {len(names)}"
    for name in names if difference is None else ():
        expected = hashlib.sha256()
        _write_tar(_Digest(expected), itertools.islice(samples, config.maxcount))
        if _file_sha256(fs, by_name[name]) != expected.hexdigest():
            difference = f"{name} differs"
            break
    if difference is not None:
        raise ValueError(
            f"{config.output} already holds shards named {shard_file_glob(config.prefix)} that are not the ones these "
            f"images make ({difference}); choose an empty folder or pass --overwrite to replace them"
        )


def _write_tar(handle, samples: Iterator[dict]) -> None:
    with TarWriter(handle, **TAR_OPTIONS) as writer:
        for sample in samples:
            writer.write(sample)


class _Digest:
    """A write-only stream that hashes what a tar writer would have written."""

    def __init__(self, digest):
        self.digest = digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


def _file_sha256(fs, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
