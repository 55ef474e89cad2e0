"""Parquet part files for the label job's output, each published all or nothing.

Rows arrive on the driver in small batches; `PartWriter` gathers them into
row groups and rolls to a new part file by rows, bytes or age, so files suit
analytics engines (tens of thousands of rows, up to ~128 MB) rather than one
tiny file per Ray block. A part is written to a temporary file first and
then published in one step (a rename in the output directory, or one S3
upload), so the output only ever holds complete parts: what resume reads is
exactly what was committed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import check
from pipeline.store import store_for

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
# what the store names in-progress parts (hidden, never "*.parquet"): what a killed
# writer may leave behind
STAGING_PATTERN = f".{PART_PREFIX}*.tmp"


@dataclass(frozen=True)
class SinkConfig:
    """When to close a part and start the next one."""

    max_rows: int = 50_000  # the CLI's --part-rows
    max_bytes: int = 128 * 1024 * 1024
    # also commit at least this often, so a killed job loses at most this much work
    max_seconds: float = 300.0
    row_group_rows: int = 10_000
    compression: str = "zstd"

    def __post_init__(self) -> None:
        for name, value in (("part rows", self.max_rows), ("part bytes", self.max_bytes),
                            ("part seconds", self.max_seconds),
                            ("row group rows", self.row_group_rows)):
            check(value > 0, f"{name} must be >= 1, got {value}")


def part_name(run_id: str, seq: int) -> str:
    """`part-<run id>-<seq>.parquet`: unique per run, sortable within it."""
    return f"{PART_PREFIX}{run_id}-{seq:05d}{PART_SUFFIX}"


class PartWriter:
    """Appends output rows; commits a part file when it is full, old, or on close."""

    def __init__(self, output: str, schema: pa.Schema, run_id: str, config: SinkConfig):
        self.output = output
        self.schema = schema
        self.run_id = run_id
        self.config = config
        self.parts: list[str] = []  # URIs of committed parts, in order
        self._store = store_for(output)
        self._seq = 0
        self._pending: list[pa.Table] = []  # rows not yet in a row group
        self._pending_rows = 0
        self._pending_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._tmp: Path | None = None
        self._part_rows = 0
        self._part_started = 0.0

    # ------------------------------------------------------------------ writing
    def write(self, table: pa.Table) -> None:
        """Append rows (cast to the output schema); may commit one or more parts.

        A batch that would take the open part past `max_rows` is split, so
        parts hold exactly `max_rows` rows (the last one fewer).
        """
        table = table.select(self.schema.names).cast(self.schema)
        while table.num_rows:
            if self._writer is None:
                self._open()
            room = self.config.max_rows - self._part_rows - self._pending_rows
            head, table = table.slice(0, room), table.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            self._pending_bytes += head.nbytes
            if self._pending_rows >= self.config.row_group_rows:
                self._write_row_group()
            if self._due():
                self.commit()

    def _due(self) -> bool:
        if self._writer is None or self._part_rows + self._pending_rows == 0:
            return False
        size = self._tmp.stat().st_size + self._pending_bytes if self._tmp else 0
        return (
            self._part_rows + self._pending_rows >= self.config.max_rows
            or size >= self.config.max_bytes
            or time.monotonic() - self._part_started >= self.config.max_seconds
        )

    def _uri(self) -> str:
        return self._store.join(self.output, part_name(self.run_id, self._seq))

    def _open(self) -> None:
        self._tmp = self._store.staging_path(self._uri())
        self._writer = pq.ParquetWriter(
            str(self._tmp), self.schema, compression=self.config.compression
        )
        self._part_rows = 0
        self._part_started = time.monotonic()

    def _write_row_group(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._part_rows += table.num_rows
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def commit(self) -> str | None:
        """Publish the open part (if it has rows); returns its URI."""
        if self._writer is None:
            return None
        self._write_row_group()
        self._writer.close()
        self._writer = None
        tmp, self._tmp = self._tmp, None
        if self._part_rows == 0:
            tmp.unlink(missing_ok=True)
            return None
        uri = self._uri()
        try:
            self._store.publish(tmp, uri)
        finally:
            tmp.unlink(missing_ok=True)  # once published it is already gone
        self._seq += 1
        self.parts.append(uri)
        return uri

    def close(self) -> None:
        """Commit what is left."""
        self.commit()

    def abort(self) -> None:
        """Drop the open part without publishing it (committed parts stay)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
