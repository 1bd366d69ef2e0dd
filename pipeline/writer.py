"""Streaming rows into one shard's Parquet file, which appears under its final key only on commit.

The file is written as a ``pipeline.storage.PendingFile``: an object-store upload completed only by
``commit()``, or a hidden temp file renamed into place on local disk. So an attempt that dies
leaves nothing under ``data/``, and ``abandon`` never touches a file another attempt committed.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import PendingFile
from schemas.labels import rows_to_batch


class PendingSink:
    """The file object pyarrow (or tarfile) writes to, leaving the PendingFile open for its commit;
    once abandoned, writes go nowhere (no footer is written)."""

    def __init__(self, file: PendingFile):
        self._file = file
        self.abandoned = False
        self.closed = False

    def write(self, data) -> int:
        return len(data) if self.abandoned else self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        if not self.abandoned:
            self._file.flush()

    def close(self) -> None:
        self.closed = True


class ParquetShardWriter:
    """``write(row)`` buffers rows and writes a row group every ``rows_per_row_group`` rows.

    Then ``finish()`` writes the footer, and ``commit()`` makes the file visible; or ``abandon()``.
    """

    def __init__(self, fs, path: str, schema: pa.Schema, rows_per_row_group: int):
        self.fs = fs
        self.path = path
        self.schema = schema
        self.rows_per_row_group = rows_per_row_group
        self._buffer: list[dict] = []
        self._file = PendingFile(fs, path)
        self._sink = PendingSink(self._file)
        self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")
        self._finished = False

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_row_group:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._buffer:
            self._writer.write_batch(rows_to_batch(self._buffer, self.schema))
            self._buffer = []

    def finish(self) -> int:
        """Write the last rows and the footer; returns the file's size in bytes. Not yet visible."""
        self._flush_rows()
        self._writer.close()
        self._finished = True
        return self._file.tell()

    def commit(self) -> None:
        """Make the finished file visible under ``path``, replacing any earlier attempt's."""
        self._file.commit()

    def abandon(self) -> None:
        """Stop without a file: nothing appears under ``path``."""
        self._sink.abandoned = True
        self._buffer = []
        if not self._finished:
            self._writer.close()
        self._file.discard()
