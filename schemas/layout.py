"""Where a labelling output keeps its files; the one place that names output keys.

    OUTPUT/
      data/<shard>.parquet        one per input shard (see schemas.labels); nothing else lives here
      _markers/<shard>.json       written last: a shard is done exactly when its marker exists
      _job.json                   model, resolved config and job options of the run
      _manifest.parquet           one row per shard (see schemas.markers), written at the end
      _SUCCESS                    written when every input shard is done
      _lease.json                 held by the job writing the output now (pipeline.lease)

Everything but the data files starts with ``_`` so Parquet readers pointed at ``OUTPUT/data/``
(or at ``OUTPUT/`` with the usual ``_``-prefix filter) see only labels.
"""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlsplit, urlunsplit

import fsspec

DATA_DIR = "data"
MARKERS_DIR = "_markers"
JOB_FILE = "_job.json"
MANIFEST_FILE = "_manifest.parquet"
SUCCESS_FILE = "_SUCCESS"
LEASE_FILE = "_lease.json"
TEMP_SUFFIX = ".tmp"  # hidden files being written on local disk (pipeline.storage)

_TAR_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str) -> str:
    """The URL without userinfo, query string or fragment: safe for logs, rows and manifests.

    Signed URLs carry their credentials in the query string, so it is replaced by ``?REDACTED``.
    A ``pipe:`` command has each URL inside it redacted.
    """
    if url.startswith("pipe:"):
        return "pipe:" + " ".join(redact_url(part) if "://" in part else part for part in url[5:].split(" "))
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "REDACTED" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it redacted: error messages from HTTP and store clients quote the
    full URL they failed on, signature included."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def shard_name(url: str) -> str:
    """The output name of an input shard: its file name without the tar suffix, made path-safe.

    Stable across runs and independent of the store, query string and credentials, so
    ``s3://b/x/shard-000001.tar?sig=...`` and ``/mnt/x/shard-000001.tar`` both give
    ``shard-000001``. The name never contains ``/`` or ``..`` and never starts with ``.`` or
    ``_`` (readers would hide it), so it cannot leave ``data/`` or ``_markers/``. Applying it to a
    name returns the name. Raises ValueError when nothing usable remains.
    """
    if url.startswith("pipe:"):
        tokens = [t for t in shlex.split(url[5:]) if t != "-"]
        tar_tokens = [t for t in tokens if ".tar" in t or ".tgz" in t]
        url = (tar_tokens or tokens or [""])[-1]
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    base = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _TAR_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    name = _UNSAFE.sub("_", base).lstrip("._-")
    if not name:
        raise ValueError(f"cannot derive an output name from shard URL {redact_url(url)!r}: its file name is empty or unsafe")
    return name


class OutputLayout:
    """The files of one labelling output on any fsspec store.

    Paths returned are the filesystem's own (no protocol), for use with ``layout.fs``; ``url()``
    turns one back into a full URL. Shard arguments may be a name or an input URL.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        if not url:
            raise ValueError("output URL must not be empty")
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"OutputLayout({redact_url(self.url)!r})"

    def _join(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    @property
    def data_dir(self) -> str:
        return self._join(DATA_DIR)

    @property
    def markers_dir(self) -> str:
        return self._join(MARKERS_DIR)

    def data_path(self, shard: str) -> str:
        return self._join(DATA_DIR, f"{shard_name(shard)}.parquet")

    def marker_path(self, shard: str) -> str:
        return self._join(MARKERS_DIR, f"{shard_name(shard)}.json")

    @property
    def manifest_path(self) -> str:
        return self._join(MANIFEST_FILE)

    @property
    def job_path(self) -> str:
        return self._join(JOB_FILE)

    @property
    def success_path(self) -> str:
        return self._join(SUCCESS_FILE)

    @property
    def lease_path(self) -> str:
        return self._join(LEASE_FILE)

    def full_url(self, path: str) -> str:
        """``path`` (as the filesystem names it) with its protocol, e.g. s3://bucket/out/data/x.parquet."""
        return self.fs.unstrip_protocol(path)

    def list_markers(self) -> list[str]:
        """Names of the shards that are done, sorted; one listing of ``_markers/``."""
        return sorted(path.rsplit("/", 1)[-1].removesuffix(".json") for path in self._list(self.markers_dir, ".json"))

    def list_data_files(self) -> list[str]:
        """Names of the shards that have a data file (done or not), sorted."""
        return sorted(path.rsplit("/", 1)[-1].removesuffix(".parquet") for path in self._list(self.data_dir, ".parquet"))

    def list_temp_files(self) -> list[str]:
        """Paths of unfinished local writes (``.<name>.<id>.tmp``) that a killed process left behind."""
        return [path for directory in (self.data_dir, self.markers_dir) for path in self._ls(directory)
                if path.rsplit("/", 1)[-1].startswith(".") and path.endswith(TEMP_SUFFIX)]

    def _list(self, directory: str, suffix: str) -> list[str]:
        return [p for p in self._ls(directory) if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith((".", "_"))]

    def _ls(self, directory: str) -> list[str]:
        # Object-store listings are cached per filesystem instance; another process may have
        # written since, so always ask the store.
        self.fs.invalidate_cache(directory)
        try:
            return self.fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
