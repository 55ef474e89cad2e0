"""Writing output parts on the workers: one Parquet part per write task, published whole.

The last stage of the label job's Ray Data stream is `write_part`: a task
gets up to `rows_per_part` output rows, writes them as one Parquet file in a
scratch place and publishes it in one step (a rename, or one S3 upload), so
the output only ever holds complete parts and resume reads exactly what was
committed. Rows never travel to the driver: a write task returns one small
summary row per part (its name and counts).

A part's name is a digest of the rows' keys, so a write task that Ray runs
again (its worker died after publishing) writes the same name with the same
rows instead of a second copy.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contract import Status
from pipeline.errors import check
from pipeline.store import store_for
from pipeline.table import PART_PREFIX, PART_SUFFIX

MiB = 1024 * 1024
ROW_OVERHEAD = 512  # bytes a row takes besides its embedding (URIs, labels, indices)


@dataclass(frozen=True)
class SinkConfig:
    """How big parts are: by rows (the CLI's --part-rows) and by bytes, whichever is smaller."""

    max_rows: int = 10_000
    max_bytes: int = 64 * MiB
    row_group_rows: int = 10_000
    compression: str = "zstd"

    def __post_init__(self) -> None:
        for name, value in (("part rows", self.max_rows), ("part bytes", self.max_bytes),
                            ("row group rows", self.row_group_rows)):
            check(value > 0, f"{name} must be >= 1, got {value}")

    def rows_per_part(self, embedding_bytes: int) -> int:
        """Rows that fit `max_rows` and `max_bytes` for a model's embedding size."""
        return max(1, min(self.max_rows, self.max_bytes // (embedding_bytes + ROW_OVERHEAD)))


@dataclass(frozen=True)
class PartSpec:
    """What a write task needs."""

    output: str  # the output's root (where its lease is)
    partition: str  # the output folder of this model version
    run_id: str
    lease_id: str  # the run's lease: a part is published only while the output's lease is it
    schema: pa.Schema
    row_group_rows: int
    compression: str


def part_name(run_id: str, uris: list[str]) -> str:
    """`part-<run id>-<digest of the rows' URIs>.parquet`: the same rows, the same name."""
    digest = hashlib.sha256("\n".join(uris).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{PART_PREFIX}{run_id}-{digest[:20]}{PART_SUFFIX}"


def write_part(batch: pa.Table, spec: PartSpec) -> pa.Table:
    """Ray Data map_batches function: write `batch` as one part; return its summary row."""
    store = store_for(spec.partition)
    table = batch.select(spec.schema.names).cast(spec.schema)
    uris = table["video_uri"].to_pylist()
    name = part_name(spec.run_id, uris)
    uri = store.join(spec.partition, name)
    tmp = store.staging_path(uri)
    try:
        pq.write_table(table, str(tmp), row_group_size=spec.row_group_rows,
                       compression=spec.compression)
        # fencing: a task of a run that died and whose output another run has taken over
        # must not add rows the new run has not accounted for
        if not store_for(spec.output).lease(spec.output, spec.lease_id).holds():
            return _summary("", table.slice(0, 0))
        store.publish(tmp, uri)
    finally:
        tmp.unlink(missing_ok=True)  # once published it is already gone
    return _summary(name, table)


def _summary(part: str, table: pa.Table) -> pa.Table:
    """One row: the part's name, its rows by verdict and by decoder, and what decoding them
    cost."""
    ok = pc.equal(table["status"], Status.OK.value)
    errors = Counter(table.filter(pc.invert(ok))["error_kind"].to_pylist())
    decoders = Counter(d for d in table["decoder"].to_pylist() if d is not None)

    def total(column: str) -> float:
        return pc.sum(table[column]).as_py() or 0

    return pa.table({
        "part": [part],
        "rows": [table.num_rows],
        "ok": [pc.sum(ok).as_py() or 0],
        "errors": [json.dumps(dict(errors), sort_keys=True)],
        "decoders": [json.dumps(dict(decoders), sort_keys=True)],
        "frames_decoded": [total("frames_decoded")],
        "frames_used": [pc.sum(pc.list_value_length(table["frame_indices"])).as_py() or 0],
        "bytes_read": [total("bytes_read")],
        "read_retries": [total("read_retries")],
        "decode_cpu_s": [total("decode_cpu_s")],
    })
