"""Shards by name and by listing: the one place that turns patterns into shard URLs and shard URLs
into the names their outputs are filed under.

``make-shards`` writes ``shard_file_name(prefix, i)``; ``label`` and ``evaluate`` find shards with
``expand_shards``; ``shard_name`` names a shard's data file and marker (``schemas.layout``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from urllib.parse import urlsplit

import braceexpand
import fsspec

from schemas.urls import has_scheme, is_glob, is_pipe, is_remote, options_for, redact_url

_TAR_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def shard_name(url: str) -> str:
    """The output name of an input shard: its file name without the tar suffix, made path-safe.

    Stable across runs and independent of the store, query string and credentials, so
    ``s3://b/x/shard-000001.tar?sig=...`` and ``/mnt/x/shard-000001.tar`` both give
    ``shard-000001``. The name never contains ``/`` or ``..`` and never starts with ``.`` or
    ``_`` (readers would hide it), so it cannot leave ``data/`` or ``_markers/``. Applying it to a
    name returns the name. Raises ValueError when nothing usable remains.
    """
    if is_pipe(url):
        tokens = [t for t in shlex.split(url[5:]) if t != "-"]
        tar_tokens = [t for t in tokens if ".tar" in t or ".tgz" in t]
        url = (tar_tokens or tokens or [""])[-1]
    path = urlsplit(url).path if has_scheme(url) else url.split("?", 1)[0]
    base = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _TAR_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    name = _UNSAFE.sub("_", base).lstrip("._-")
    if not name:
        raise ValueError(f"cannot derive an output name from shard URL {redact_url(url)!r}: its file name is empty or unsafe")
    return name


def shard_file_name(prefix: str, index: int) -> str:
    """What ``make-shards`` calls its ``index``-th shard: ``shard-000042.tar``."""
    return f"{prefix}-{index:06d}.tar"


def shard_file_glob(prefix: str) -> str:
    """A glob matching every ``shard_file_name(prefix, ...)``."""
    return f"{prefix}-*.tar"


def expand_shards(patterns: Sequence[str], storage_options: dict | None = None, folders: bool = False) -> list[str]:
    """Shard URLs in the given order: brace patterns expanded, globs listed (sorted), duplicates dropped.

    A URL without a wildcard is kept as written without asking the store (a list of 100,000 URLs
    costs no request), unless ``folders``: then each is checked, and a folder gives its ``*.tar``
    files, sorted. Raises FileNotFoundError for a pattern or folder that matches no file.
    """
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            if is_pipe(url):
                urls.append(url)
            elif is_glob(url):
                urls.extend(_glob(url, url, storage_options))
            elif folders and _is_folder(url, storage_options):
                urls.extend(_glob(f"{url.rstrip('/')}/*.tar", url, storage_options))
            else:
                urls.append(url)
    return list(dict.fromkeys(urls))


def _glob(pattern: str, given: str, storage_options: dict | None) -> list[str]:
    fs, path = fsspec.core.url_to_fs(pattern, **options_for(pattern, storage_options))
    matches = sorted(fs.glob(path))
    if not matches:
        raise FileNotFoundError(f"input pattern {redact_url(given)!r} matches no file")
    return [fs.unstrip_protocol(m) if is_remote(pattern) else m for m in matches]


def _is_folder(url: str, storage_options: dict | None) -> bool:
    fs, path = fsspec.core.url_to_fs(url, **options_for(url, storage_options))
    return fs.isdir(path)
