"""Reading one input shard: its size and version, and its samples, grouped from its tar members as
webdataset groups them. (Finding the shards is ``schemas.shards``.)

webdataset opens local files and ``pipe:`` commands itself but has no opener for object stores
(it shells out to ``gsutil``/``curl``), so ``register_fsspec_opener`` adds one for every fsspec
protocol. Samples are streamed: the tar is read once, front to back, never held whole.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import tarfile
from collections.abc import Iterator

import fsspec
from webdataset import tariterators

from schemas.urls import is_pipe, is_remote, redact_url

logger = logging.getLogger(__name__)

# webdataset keeps its own handling of these: local files, shell pipes.
_WEBDATASET_NATIVE = {"file", "local", "pipe"}
# The module, not the function of the same name that `webdataset` exports.
gopen = importlib.import_module("webdataset.gopen")

# Reasons for samples whose tar members cannot be read as one sample (decode.py has the image ones).
# Error messages read "<reason>: <detail>"; per-shard statistics count the reason.
DUPLICATE_MEMBER = "duplicate member"
NOT_A_FILE = "member not a regular file"
RESERVED_NAME = "reserved member name"
UNDECODABLE_NAME = "undecodable member name"
# In a sample dict: the SampleError that makes the sample one error row (it then has no members).
SAMPLE_ERROR = "__error__"
_MEMBER_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.FIFOTYPE: "FIFO",
                 tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device"}


class ShardReadError(RuntimeError):
    """A shard could not be opened or read to its end (missing, unreadable, not a tar, cut off)."""


class SampleError(ValueError):
    """One sample cannot be labelled; ``str()`` is the row's error message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, storage_options: dict | None = None, **_):
    """webdataset opener backed by fsspec, so s3://, gs://, az://, hf://, ... all stream."""
    return fsspec.open(url, mode, **(storage_options or {})).open()


@functools.cache
def register_fsspec_opener() -> None:
    for protocol in fsspec.available_protocols():
        if protocol not in _WEBDATASET_NATIVE:
            gopen.gopen_schemes[protocol] = gopen_fsspec


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    size: int | None
    etag: str | None


def shard_info(url: str, storage_options: dict | None = None) -> ShardInfo:
    """Size and version of an input shard; raises ShardReadError when it does not exist."""
    if is_pipe(url):
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


class _HeaderRecordingTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo, noting on the archive the header error that ended its member list.

    After the first member, tarfile ends the list quietly where the file stops or a header is cut
    off or corrupt, exactly as at the end-of-archive blocks; ``_check_end`` tells these apart.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as error:
            tar.last_header_error = error
            raise


def _check_end(tar: tarfile.TarFile) -> None:
    """Raise tarfile.ReadError unless the members ended at the archive's end-of-archive blocks."""
    error = getattr(tar, "last_header_error", None)
    if isinstance(error, tarfile.EOFHeaderError):
        return
    if isinstance(error, tarfile.EmptyHeaderError):
        # Every writer ends a tar with zero blocks; a file that stops between two members instead was
        # most likely cut there (copies stop at block-aligned sizes), with samples after the cut lost.
        raise tarfile.ReadError(f"the file ends at byte {tar.offset} between two members, without the end-of-archive blocks")
    raise tarfile.ReadError(f"{error} at byte {tar.offset}")


class ShardStream:
    """The samples of one shard as webdataset dicts (``__key__``, ``__url__``, one entry per member).

    Members are grouped into samples as WebDataset groups them: consecutive members whose names
    share the part before the first dot of the file name (``images/0001.jpg`` and
    ``images/0001.json`` are sample ``images/0001``); a key seen again later is another sample.
    Keys are kept as they are (``..`` and folders included) and are never used as paths.

    A sample that cannot be read as one (a member name repeated, a link instead of a file, a name
    that is not UTF-8) holds only ``SAMPLE_ERROR``: it becomes one error row, the shard goes on.
    Members without a ``<key>.<extension>`` name (``README``, ``._0001.jpg``) belong to no sample;
    WebDataset ignores them and so does this, with one warning per shard.

    Iterate once. Only a failure of the tar itself raises ShardReadError, naming the shard: it
    cannot be opened or read, it is not a tar, or it is cut off or damaged (the message says after
    how many whole samples). The shard is then retried whole, never committed in part.
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url
        self.storage_options = storage_options or {}
        self.samples = 0  # whole samples yielded so far
        self.ignored: list[str] = []  # names of members that belong to no sample
        self._reader: _CountingReader | None = None

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read if self._reader else 0

    def __iter__(self) -> Iterator[dict]:
        register_fsspec_opener()
        options = {"storage_options": self.storage_options} if is_remote(self.url) else {}
        try:
            stream = gopen.gopen(self.url, "rb", **options)
        except (OSError, ValueError) as error:
            raise ShardReadError(f"cannot open shard {redact_url(self.url)}: {error}") from error
        self._reader = _CountingReader(stream)
        tar = None
        try:
            tar = tarfile.open(fileobj=self._reader, mode="r|*", tarinfo=_HeaderRecordingTarInfo)
            for sample in self._group(tar):
                self.samples += 1
                yield sample
            _check_end(tar)
        except (OSError, EOFError, tarfile.TarError) as error:
            raise self._read_error(error, is_tar=tar is not None) from error
        finally:
            self._reader.close()
        if self.ignored:
            logger.warning("shard %s: %d member(s) without a <key>.<extension> name belong to no sample and were "
                           "ignored, as WebDataset ignores them: %s", redact_url(self.url), len(self.ignored),
                           ", ".join(repr(name) for name in self.ignored[:5]))

    def _group(self, tar: tarfile.TarFile) -> Iterator[dict]:
        """Consecutive members sharing a key make one sample: webdataset's ``group_by_keys`` rule."""
        key, members = None, []
        for info in tar:
            tar.members = []  # in stream mode tarfile would otherwise keep every header it has read
            if info.isdir():
                continue
            prefix, extension = tariterators.base_plus_ext(info.name)
            if prefix is None:
                self.ignored.append(info.name)
                continue
            if members and prefix != key:
                yield _sample(key, members, self.url)  # before reading on: a cut below loses no whole sample
                members = []
            key = prefix
            data = tar.extractfile(info).read() if info.isreg() else None  # links, devices, FIFOs have none
            members.append((info, extension.lower(), data))  # lower case, as webdataset compares them
        if members:
            yield _sample(key, members, self.url)

    def _read_error(self, error: Exception, is_tar: bool) -> ShardReadError:
        shard = redact_url(self.url)
        if isinstance(error, OSError):  # the store or the file system, not the bytes
            return ShardReadError(f"cannot read shard {shard} after {self.samples} whole sample(s): {error}")
        if not is_tar:
            return ShardReadError(f"shard {shard} is not a tar archive: {error}")
        return ShardReadError(
            f"shard {shard} is cut off or damaged after {self.samples} whole sample(s): {error}. No row of it is "
            "kept, so that a repaired shard is labelled whole: replace it and run the job again"
        )


def _sample(key: str, members: list[tuple[tarfile.TarInfo, str, bytes | None]], url: str) -> dict:
    """The webdataset dict of one sample, or, when its members cannot be read as one, its SampleError."""
    undecodable = [info.name for info, _, _ in members if not _is_utf8(info.name)]
    if undecodable:
        # Parquet strings hold UTF-8 only; the key is stored with the undecodable bytes as \x escapes.
        printable = _escaped(key)
        error = SampleError(UNDECODABLE_NAME, f"{_escaped(undecodable[0])} is not UTF-8 (key stored as {printable})")
        return {"__key__": printable, "__url__": url, SAMPLE_ERROR: error}
    error = _member_problem(members)
    if error is not None:
        return {"__key__": key, "__url__": url, SAMPLE_ERROR: error}
    return {"__key__": key, "__url__": url, **{extension: data for _, extension, data in members}}


def _member_problem(members: list[tuple[tarfile.TarInfo, str, bytes | None]]) -> SampleError | None:
    """Why these members are not one readable sample (the first reason found), or None."""
    names: dict[str, list[str]] = {}
    for info, extension, data in members:
        if data is None:
            kind = _MEMBER_KINDS.get(info.type, f"member of tar type {info.type!r}")
            return SampleError(NOT_A_FILE, f"{info.name} is a {kind}")
        if extension.startswith("__") and extension.endswith("__"):  # would overwrite __key__, __url__, ...
            return SampleError(RESERVED_NAME, f"{info.name}: extensions of the form __name__ are WebDataset's own fields")
        names.setdefault(extension, []).append(info.name)
    for same in names.values():
        if len(same) > 1:
            return SampleError(DUPLICATE_MEMBER, _repeated(same))
    return None


def _repeated(names: list[str]) -> str:
    if len(set(names)) == 1:
        return f"{names[0]} appears {'twice' if len(names) == 2 else f'{len(names)} times'}"
    return f"{', '.join(names)} are one member (extensions are compared in lower case)"


def _is_utf8(name: str) -> bool:
    # tarfile decodes names with surrogateescape: bytes that are not UTF-8 become lone surrogates.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _escaped(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
