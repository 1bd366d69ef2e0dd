"""Builders of WebDataset shards for the labelling job's tests (any fsspec store)."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import webdataset as wds
from PIL import Image


def jpeg(array: np.ndarray, size: tuple[int, int] = (96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).resize(size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tar_bytes(samples: list[dict]) -> bytes:
    """A WebDataset tar holding ``samples`` (dicts with ``__key__`` and one entry per member)."""
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for sample in samples:
            writer.write(sample)
    return buffer.getvalue()


def write_shards(directory: str, shards: dict[str, list[dict]], storage_options: dict | None = None) -> list[str]:
    """Write ``{file name: samples}`` under ``directory`` (any fsspec URL); returns the shard URLs."""
    fs, root = fsspec.core.url_to_fs(directory, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    urls = []
    for name, samples in shards.items():
        path = f"{root.rstrip('/')}/{name}"
        fs.pipe_file(path, tar_bytes(samples))
        urls.append(f"{directory.rstrip('/')}/{name}")
    return urls
