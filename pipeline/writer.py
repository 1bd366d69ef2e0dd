"""Streaming rows into one shard's Parquet file, under its final key.

Object stores make a streamed upload visible only when it completes, and the shard's marker,
written after, is what makes the file count; so the file is written directly under its final name,
and a rerun of the shard simply overwrites it. ``abandon`` removes what an interrupted attempt wrote.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.labels import rows_to_batch


class _Sink:
    """The file object pyarrow writes to; once abandoned, writes go nowhere (no footer is written)."""

    def __init__(self, file):
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
    """``write(row)`` buffers rows and writes a row group every ``rows_per_row_group`` rows."""

    def __init__(self, fs, path: str, schema: pa.Schema, rows_per_row_group: int):
        self.fs = fs
        self.path = path
        self.schema = schema
        self.rows_per_row_group = rows_per_row_group
        self._buffer: list[dict] = []
        self._file = fs.open(path, "wb")
        self._sink = _Sink(self._file)
        self._writer = pq.ParquetWriter(self._sink, schema, compression="zstd")

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_row_group:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._buffer:
            self._writer.write_batch(rows_to_batch(self._buffer, self.schema))
            self._buffer = []

    def close(self) -> int:
        """Write the footer and close; returns the file's size in bytes."""
        self._flush_rows()
        self._writer.close()
        size = self._file.tell()
        self._file.close()
        return size

    def abandon(self) -> None:
        """Stop without a valid file: nothing is left under the final key."""
        self._sink.abandoned = True
        self._buffer = []
        self._writer.close()
        self._file.close()
        if self.fs.exists(self.path):
            self.fs.rm_file(self.path)
