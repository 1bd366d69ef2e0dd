"""Input shards: reading URL list files, expanding patterns into URLs, and streaming a shard's
samples with webdataset.

webdataset opens local files and ``pipe:`` commands itself but has no opener for object stores
(it shells out to ``gsutil``/``curl``), so ``register_fsspec_opener`` adds one for every fsspec
protocol. Samples are streamed: the tar is read once, front to back, never held whole.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
import tarfile
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

import braceexpand
import fsspec
from webdataset import tariterators
from webdataset.handlers import reraise_exception

from schemas.layout import redact_url

_GLOB_CHARS = "*?["
# In a URL list, "#" after whitespace starts a comment, as in pip requirements files: URLs cannot
# hold raw whitespace, so "a.tar # note" loses its note while "a.tar#frag" stays whole.
_TRAILING_COMMENT = re.compile(r"\s+#.*")
# webdataset keeps its own handling of these: local files, shell pipes.
_WEBDATASET_NATIVE = {"file", "local", "pipe"}
# The module, not the function of the same name that `webdataset` exports.
gopen = importlib.import_module("webdataset.gopen")


class ShardReadError(RuntimeError):
    """A shard could not be opened or read to its end (missing, truncated, not a tar)."""


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, storage_options: dict | None = None, **_):
    """webdataset opener backed by fsspec, so s3://, gs://, az://, hf://, ... all stream."""
    return fsspec.open(url, mode, **(storage_options or {})).open()


@functools.cache
def register_fsspec_opener() -> None:
    for protocol in fsspec.available_protocols():
        if protocol not in _WEBDATASET_NATIVE:
            gopen.gopen_schemes[protocol] = gopen_fsspec


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith(("file://", "local://"))


def read_url_list(url: str, storage_options: dict | None = None) -> list[str]:
    """The entries of a URL list file (local path or fsspec URL), one per line, in file order.

    Lines are stripped of whitespace (CRLF endings too) and a UTF-8 byte-order mark; blank lines,
    lines starting with ``#`` and trailing `` # comments`` are skipped. Entries are kept as written
    (patterns, globs, relative paths), exactly as if given to ``--input``. Raises FileNotFoundError
    for a missing file and ValueError for a folder, a file that is not UTF-8 text, or a list with no
    entries.
    """
    try:
        with fsspec.open(url, "rt", encoding="utf-8-sig", **(storage_options or {})) as lines:
            entries = [entry for entry in (_list_entry(line) for line in lines) if entry]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"URL list {redact_url(url)} does not exist; check the path given to --input-list "
            "(and --storage-options for a remote store)"
        ) from None
    except IsADirectoryError:
        raise ValueError(
            f"URL list {redact_url(url)} is a folder; --input-list takes a text file with one shard URL per "
            "line (to label every shard in a folder, use --input 'FOLDER/*.tar')"
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(
            f"URL list {redact_url(url)} is not UTF-8 text ({error.reason}); "
            "--input-list takes a text file with one shard URL per line"
        ) from None
    if not entries:
        raise ValueError(f"URL list {redact_url(url)} has no URLs (only blank lines and # comments)")
    return entries


def _list_entry(line: str) -> str:
    """The URL on one line of a URL list; empty for blank and comment lines."""
    line = line.strip()
    return "" if line.startswith("#") else _TRAILING_COMMENT.sub("", line)


def expand_inputs(patterns: Sequence[str], storage_options: dict | None = None) -> list[str]:
    """Shard URLs in the given order: brace patterns expanded, globs listed (sorted), duplicates dropped."""
    urls: list[str] = []
    for pattern in patterns:
        for url in braceexpand.braceexpand(pattern):
            if url.startswith("pipe:") or not _is_glob(url):
                urls.append(url)
                continue
            fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
            matches = sorted(fs.glob(path))
            if not matches:
                raise FileNotFoundError(f"input pattern {redact_url(url)!r} matches no file")
            urls.extend(fs.unstrip_protocol(m) if is_remote(url) else m for m in matches)
    return list(dict.fromkeys(urls))


def _is_glob(url: str) -> bool:
    if "://" in url and "=" in urlsplit(url).query:  # a query string (signed URL), not a '?' wildcard
        return any(ch in urlsplit(url).path for ch in _GLOB_CHARS)
    return any(ch in url for ch in _GLOB_CHARS)


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    size: int | None
    etag: str | None


def shard_info(url: str, storage_options: dict | None = None) -> ShardInfo:
    """Size and version of an input shard; raises ShardReadError when it does not exist."""
    if url.startswith("pipe:"):
        return ShardInfo(size=None, etag=None)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ShardReadError(f"shard {redact_url(url)} does not exist") from None
    etag = info.get("ETag") or info.get("etag")
    if etag is None and info.get("mtime") is not None:
        etag = f"mtime:{info['mtime']}"
    return ShardInfo(size=info.get("size"), etag=str(etag).strip('"') if etag is not None else None)


class _CountingReader:
    """Counts the bytes read from a stream (drives the progress estimate)."""

    def __init__(self, stream):
        self._stream = stream
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self._stream.close()


class ShardStream:
    """The samples of one shard as webdataset dicts (``__key__``, ``__url__``, one entry per member).

    Iterate once. Any error reading the tar (missing file, truncated archive, bad header) is
    raised as ShardReadError naming the shard: the whole shard is retried, never half-skipped.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.storage_options = storage_options or {}
        self._reader: _CountingReader | None = None

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read if self._reader else 0

    def __iter__(self) -> Iterator[dict]:
        register_fsspec_opener()
        options = {"storage_options": self.storage_options} if is_remote(self.url) and not self.url.startswith("pipe:") else {}
        try:
            stream = gopen.gopen(self.url, "rb", **options)
        except (OSError, ValueError) as error:
            raise ShardReadError(f"cannot open shard {redact_url(self.url)}: {error}") from error
        self._reader = _CountingReader(stream)
        try:
            files = tariterators.tar_file_expander(
                [{"url": self.url, "stream": self._reader}], handler=reraise_exception, eof_value=None
            )
            yield from tariterators.group_by_keys(files, handler=reraise_exception)
        except (OSError, EOFError, ValueError, tarfile.TarError) as error:
            raise ShardReadError(f"cannot read shard {redact_url(self.url)}: {_first_arg(error)}") from error
        finally:
            self._reader.close()


def _first_arg(error: Exception) -> str:
    # webdataset appends the stream object and URL to an error's args; the first one is the message.
    return str(error.args[0]) if error.args else type(error).__name__
