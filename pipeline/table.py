"""The output table: where a run's rows go, and what earlier runs already wrote there.

    OUT/<model name>/<model version>/part-<run id>-<content digest>.parquet
    OUT/<model name>/<model version>/_runs/<run id>.json    a finished run's record
    OUT/.lock  or  OUT/_lock.json                            the one-writer lease

One folder (partition) per model name and version, so a new champion with
another embedding width never meets an older schema, and each partition is
a plain Parquet dataset (DuckDB, Spark, pyarrow). A run writes
`_runs/<run id>.json` last: a run without one did not finish. Folder names
are the name and version, percent-encoded where a character would not be
safe in a path.

A video is done, for a model version and the settings that shape labels
(sampling, number of segments), when a committed part holds a row for its
`(video_uri, source_version)` with a final verdict: labelled, or an error
the video itself causes. Rows with retryable errors (the store, a timeout, a
crash) are not done: the next run tries those videos again, up to a retry
budget, and readers take the latest row per video (see docs/labelling.md).
"""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.contract import FINAL_KINDS, KEY_COLUMNS, Status
from pipeline.errors import LabelError, one_line
from pipeline.keys import KeySet, hash_keys
from pipeline.store import ObjectInfo, store_for

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
RUNS = "_runs"
# what the store names in-progress parts (hidden, never "*.parquet"): what a killed
# writer may leave behind
STAGING_PATTERN = f".{PART_PREFIX}*.tmp"
READ_WORKERS = 16
# a video whose retryable errors already fill this many rows is not tried again (a file that
# crashes or hangs the decoder every time would otherwise be retried every night forever)
RETRY_BUDGET = 3


class OutputError(LabelError):
    """The output holds something this job cannot append to, or cannot be read; one line."""


def _folder_name(text: str) -> str:
    return quote(text, safe="-_.@+=") or "_"


class OutputTable:
    """One model version's partition of an output."""

    def __init__(self, root: str, model_name: str, model_version: str):
        self.root = root
        self.store = store_for(root)
        self.partition = self.store.join(
            self.store.join(root, _folder_name(model_name)), _folder_name(model_version))

    def check_root(self) -> None:
        """OutputError unless the output is a folder (or nothing yet)."""
        try:
            kind = self.store.kind(self.root)
        except Exception as e:
            raise OutputError(f"cannot read output {self.root}: {one_line(e)}") from None
        if kind == "object":
            raise OutputError(f"output is a file, not a {self.store.container_word}: {self.root}")

    def parts(self) -> list[ObjectInfo]:
        """The partition's committed part files (none if it does not exist yet)."""
        try:
            if self.store.kind(self.partition) == "missing":
                return []
            return [o for o in self.store.list(self.partition, suffixes=(PART_SUFFIX,))
                    if o.uri.rsplit("/", 1)[-1].startswith(PART_PREFIX)]
        except Exception as e:
            raise OutputError(f"cannot list output {self.partition}: {one_line(e)}") from None

    def _open(self, part: ObjectInfo) -> pq.ParquetFile:
        # remote parts are read through ranged GETs: the footer and a few columns
        return pq.ParquetFile(self.store.open_input(part.uri, size=part.size))

    def _each_part(self, fn, parts: list[ObjectInfo]) -> list:
        def guarded(part: ObjectInfo):
            try:
                return fn(part)
            except OutputError:
                raise
            except Exception as e:
                raise OutputError(f"cannot read existing part {part.uri}: {one_line(e)}") from None

        if not parts:
            return []
        with ThreadPoolExecutor(min(READ_WORKERS, len(parts))) as pool:
            return list(pool.map(guarded, parts))

    def check_schema(self, schema: pa.Schema) -> None:
        """OutputError if any committed part has a column of another type than `schema`.

        Every part's footer is read (only the footers), so a part written by
        another setting (`--embedding-dtype`) is found here, not by a reader.
        """

        def check(part: ObjectInfo) -> None:
            existing = self._open(part).schema_arrow
            for field in schema:
                i = existing.get_field_index(field.name)
                if i >= 0 and not existing.field(i).type.equals(field.type):
                    raise OutputError(
                        f"{part.uri} has column {field.name!r} as {existing.field(i).type}, "
                        f"not {field.type}; write to another --output")

        self._each_part(check, self.parts())

    def done(self, sampling: str, num_segments: int) -> KeySet:
        """Keys of the videos with a final verdict for these settings (see the module doc),
        and of those that spent their retry budget."""

        def keys(part: ObjectInfo) -> tuple[list[bytes], list[bytes]]:
            table = self._open(part).read(columns=list(KEY_COLUMNS))
            mine = pc.and_(pc.equal(table["sampling"], sampling),
                           pc.equal(table["num_segments"], num_segments))
            table = table.filter(mine)
            final = pc.fill_null(pc.or_(
                pc.equal(table["status"], Status.OK.value),
                pc.is_in(table["error_kind"], pa.array(FINAL_KINDS, pa.string()))), False)

            def hashed(rows: pa.Table) -> list[bytes]:
                return hash_keys(rows["video_uri"].to_pylist(),
                                 rows["source_version"].to_pylist())

            return hashed(table.filter(final)), hashed(table.filter(pc.invert(final)))

        done, tries = KeySet(), Counter()
        for final, retryable in self._each_part(keys, self.parts()):
            done.add(final)
            tries.update(retryable)
        done.add(key for key, n in tries.items() if n >= RETRY_BUDGET)
        return done

    def clean_staging(self) -> int:
        """Remove in-progress part files a killed run left behind (call with the lease held)."""
        return self.store.clean_staging(self.partition, STAGING_PATTERN)

    def write_run(self, run_id: str, record: dict) -> str:
        """Publish `_runs/<run id>.json`, the record that marks a run finished; returns its URI."""
        uri = self.store.join(self.store.join(self.partition, RUNS), f"{run_id}.json")
        tmp = self.store.staging_path(uri)
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        self.store.publish(tmp, uri)
        return uri

    def runs(self) -> list[dict]:
        """The records of the finished runs in this partition, oldest first."""
        folder = self.store.join(self.partition, RUNS)
        if self.store.kind(folder) == "missing":
            return []
        records = [json.loads(self.store.read_bytes(o.uri))
                   for o in self.store.list(folder, suffixes=(".json",))]
        return sorted(records, key=lambda r: r.get("finished_at", ""))
