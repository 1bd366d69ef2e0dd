"""All-or-nothing and create-only writes to the output, on local disk and on object stores.

Object stores show an upload only once it completes; a local disk shows a file while it is being
written, so a reader (or a second job) could see half a file. ``PendingFile`` hides the difference:
what it writes appears under its final name on ``commit()`` and never after ``discard()``.
``create_exclusive`` is the conditional create that markers and the output lease rely on:
S3's ``If-None-Match: *`` through s3fs's "xb" mode, a hard link on local disk.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import uuid

from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from schemas.layout import TEMP_SUFFIX

logger = logging.getLogger(__name__)


def is_local(fs) -> bool:
    return isinstance(fs, LocalFileSystem)


def temp_sibling(path: str) -> str:
    """A hidden name next to ``path``: same folder (so renames are atomic), ignored by ``*.parquet`` globs."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


class PendingFile:
    """A binary file that appears under ``path`` only on ``commit()``.

    Local disk: a hidden temp file renamed into place. ``memory://``: bytes held here and stored
    whole (its files ignore ``autocommit=False`` and appear as soon as they are opened). Object
    stores: fsspec's transactional upload, completed by ``commit()``, aborted by ``discard()``.
    """

    def __init__(self, fs, path: str):
        self.fs = fs
        self.path = path
        self.settled = False  # committed or discarded
        self._temp = None
        if is_local(fs):
            self._temp = temp_sibling(path)
            self._file = open(self._temp, "wb")  # noqa: SIM115 - closed by commit/discard
        elif isinstance(fs, MemoryFileSystem):
            self._file = io.BytesIO()
        else:
            self._file = fs.open(path, "wb", autocommit=False)

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def commit(self) -> None:
        self.settled = True
        if self._temp is not None:
            self._file.close()
            os.replace(self._temp, self.path)
        elif isinstance(self._file, io.BytesIO):
            with self.fs.open(self.path, "wb") as file:  # not pipe_file, which memory:// stores without opening
                file.write(self._file.getvalue())
        else:
            self._file.close()
            self._file.commit()

    def discard(self) -> None:
        """Forget what was written; never touches ``path`` itself, which may be another attempt's."""
        if self.settled:
            return
        self.settled = True
        if self._temp is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._temp)
        elif isinstance(self._file, io.BytesIO):
            self._file = io.BytesIO()
        else:
            try:
                self._file.discard()
            finally:
                self._file.closed = True  # so garbage collection does not try to upload the rest


def replace_file(fs, path: str, data: bytes) -> None:
    """Write ``path`` whole; readers see the old content or the new, never a mix."""
    if is_local(fs):
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        temp = temp_sibling(path)
        with open(temp, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    else:
        fs.pipe_file(path, data)


def create_exclusive(fs, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    Two callers racing for the same path: exactly one gets True, on local disk and on S3. Stores
    without conditional writes fall back to check-then-write, which a race can defeat (logged once).
    """
    if is_local(fs):
        return _link_exclusive(fs, path, data)
    try:
        with fs.open(path, "xb") as file:
            file.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # the filesystem has no "x" mode
        _warn_not_exclusive(type(fs).__name__)
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True


def _link_exclusive(fs, path: str, data: bytes) -> bool:
    # Write a temp file, then hard-link it to the final name: link() fails if the name exists,
    # and readers never see the file half-written (O_EXCL alone would show it empty for a moment).
    fs.makedirs(os.path.dirname(path), exist_ok=True)
    temp = temp_sibling(path)
    with open(temp, "wb") as file:
        file.write(data)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (some network and FUSE mounts): exclusive but not atomic
        try:
            with open(path, "xb") as file:
                file.write(data)
            return True
        except FileExistsError:
            return False
    finally:
        os.remove(temp)


@functools.cache
def _warn_not_exclusive(filesystem: str) -> None:
    logger.warning("%s has no conditional create; two jobs started at the same moment on one output "
                   "could both take it", filesystem)

