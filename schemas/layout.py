"""Where a labelling output keeps its files; the one place that names output keys.

    OUTPUT/
      data/<shard>.parquet        one per input shard (see schemas.labels); nothing else lives here
      _markers/<shard>.json       written last: a shard is done exactly when its marker exists
      _job.json                   model, resolved config and job options of the run
      _manifest.parquet           one row per shard (see schemas.markers), written at the end
      _SUCCESS                    written when every input shard is done
      _lease.json                 held by the job writing the output now (pipeline.lease)

Everything but the data files starts with ``_`` so Parquet readers pointed at ``OUTPUT/data/``
(or at ``OUTPUT/`` with the usual ``_``-prefix filter) see only labels; but a data file appears
before its marker, so only ``schemas.reading.committed_data_files`` lists exactly the done shards'.
"""

from __future__ import annotations

import fsspec

from schemas.shards import shard_name
from schemas.urls import redact_url

DATA_DIR = "data"
MARKERS_DIR = "_markers"
JOB_FILE = "_job.json"
MANIFEST_FILE = "_manifest.parquet"
SUCCESS_FILE = "_SUCCESS"
LEASE_FILE = "_lease.json"
TEMP_SUFFIX = ".tmp"  # hidden files being written on local disk (pipeline.storage)


def data_file_key(shard: str) -> str:
    """Where a shard's data file lies relative to the output root, as markers and the manifest record it."""
    return f"{DATA_DIR}/{shard_name(shard)}.parquet"


class OutputLayout:
    """The files of one labelling output on any fsspec store.

    Paths returned are the filesystem's own (no protocol), for use with ``layout.fs``; ``full_url()``
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
        return self._join(data_file_key(shard))

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
