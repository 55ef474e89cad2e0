"""Resume: what an output location already holds, so a rerun labels only the rest.

A video counts as done for a model version when a committed part file holds
a row with its `(video_uri, source_version)` and that `model_name` and
`model_version` (registry versions are small integers that every registered
model has, so the version alone does not say which model), error
rows included (so a rerun never writes a second row for the same video and
version). Only committed parts are read: in-progress files are not part
files by name, and leftovers from a killed run are removed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contract import KEY_COLUMNS
from pipeline.errors import LabelError, one_line
from pipeline.sink import PART_PREFIX, PART_SUFFIX, STAGING_PATTERN
from pipeline.store import ObjectInfo, store_for

READ_WORKERS = 16


class ResumeError(LabelError):
    """The output location holds something this job cannot append to; one line."""


def committed_parts(output: str) -> list[ObjectInfo]:
    """Part files already published under `output` (none if it does not exist yet)."""
    store = store_for(output)
    try:
        kind = store.kind(output)
        if kind == "object":
            raise ResumeError(f"output is a file, not a {store.container_word}: {output}")
        if kind == "missing":
            return []
        objects = store.list(output, suffixes=(PART_SUFFIX,))
        return [o for o in objects if o.uri.rsplit("/", 1)[-1].startswith(PART_PREFIX)]
    except ResumeError:
        raise
    except Exception as e:
        raise ResumeError(f"cannot list output {output}: {one_line(e)}") from None


def clean_stale_staging(output: str) -> int:
    """Remove in-progress part files a killed run left in `output`; returns how many."""
    return store_for(output).clean_staging(output, STAGING_PATTERN)


def _open(part: ObjectInfo) -> pq.ParquetFile:
    # remote parts are read through ranged GETs: the footer and three columns, not the file
    return pq.ParquetFile(store_for(part.uri).open_input(part.uri, size=part.size))


def _keys(part: ObjectInfo, model_name: str, model_version: str) -> pa.Table:
    try:
        table = _open(part).read(columns=list(KEY_COLUMNS))
    except Exception as e:
        raise ResumeError(f"cannot read existing part {part.uri}: {one_line(e)}") from None
    mine = pc.and_(pc.equal(table["model_name"], model_name),
                   pc.equal(table["model_version"], model_version))
    return table.filter(mine).select(["video_uri", "source_version"])


def done_keys(output: str, model_name: str, model_version: str) -> set[tuple[str, str]]:
    """`(video_uri, source_version)` of every video this model version has a row for."""
    parts = committed_parts(output)
    done: set[tuple[str, str]] = set()
    if not parts:
        return done
    with ThreadPoolExecutor(min(READ_WORKERS, len(parts))) as pool:
        for table in pool.map(lambda p: _keys(p, model_name, model_version), parts):
            done.update(
                zip(table["video_uri"].to_pylist(), table["source_version"].to_pylist(),
                    strict=True)
            )
    return done


def check_schema(output: str, schema: pa.Schema) -> None:
    """Raise ResumeError if existing parts have columns of other types than `schema`.

    Typical cause: another model (embedding width) or `--embedding-dtype`
    writing into the same output, which analytics engines could not read as
    one table.
    """
    parts = committed_parts(output)
    if not parts:
        return
    try:
        existing = _open(parts[0]).schema_arrow
    except Exception as e:
        raise ResumeError(f"cannot read existing part {parts[0].uri}: {one_line(e)}") from None
    for field in schema:
        idx = existing.get_field_index(field.name)
        if idx >= 0 and not existing.field(idx).type.equals(field.type):
            raise ResumeError(
                f"{output} already holds parts whose column {field.name!r} is "
                f"{existing.field(idx).type}, not {field.type}; write to another --output"
            )
