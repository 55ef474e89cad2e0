"""What to label: a local directory, an `s3://bucket/prefix/`, one video, or a manifest.

Inputs stream out in chunks (`iter_inputs`), so a manifest of millions of
rows or a prefix of millions of objects never sits in memory whole. Each
chunk is an Arrow table of distinct inputs (`INPUT_SCHEMA`): the URI, its
version and size, and, for an input already known to be broken at listing
(a missing object, a dangling link, a FIFO, a name that is not UTF-8), the
error row's kind and message, so it costs one row at listing speed.

A manifest is a Parquet, CSV or JSON-lines file (local or on S3) with a `uri`
column, or `bucket` and `key` columns as S3 Inventory writes them. Optional
columns `etag` / `e_tag` / `version` / `source_version` and `size` save a
HEAD request per object; without them each object is stat-ed (in parallel).
Entries are normalised (relative ones are relative to the manifest) and
deduplicated by URI, first occurrence wins.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as stat_mod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pyarrow as pa

from pipeline.contract import ErrorKind
from pipeline.errors import LabelError, one_line
from pipeline.keys import KeySet, hash_keys
from pipeline.store import resolve, store_for
from pipeline.store.local import local_path

VIDEO_SUFFIXES = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
    ".ts", ".mts", ".m2ts", ".flv", ".wmv", ".3gp", ".ogv",
)
MANIFEST_FORMATS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json", ".ndjson": "json", ".json": "json",
}
VERSION_COLUMNS = ("source_version", "version", "etag", "e_tag")
STAT_WORKERS = 32
CHUNK_ROWS = 1024
# the version of an input that could not be stat-ed: its row is an error row
MISSING_VERSION = ""
INPUT_SCHEMA = pa.schema([
    ("uri", pa.string()), ("version", pa.string()), ("size", pa.int64()),
    ("error_kind", pa.string()), ("error_message", pa.string()),
])


class ListingError(LabelError):
    """The input cannot be listed (not found, unreadable manifest, no videos); one line."""


@dataclass
class ListingStats:
    """What a listing has seen so far (updated as its chunks are read)."""

    kind: str = ""  # "directory" | "prefix" | "manifest" | "file"
    listed: int = 0  # distinct inputs
    duplicates: int = 0  # URIs listed more than once (kept once)
    invalid_rows: int = 0  # manifest rows with no usable URI
    _seen: KeySet = field(default_factory=KeySet, repr=False)


@dataclass(frozen=True)
class Entry:
    """One listed input, or one already known to be broken."""

    uri: str
    version: str = MISSING_VERSION
    size: int = -1
    error_kind: ErrorKind | None = None
    error_message: str | None = None
    kept: tuple[str | None, ...] = ()  # the manifest columns carried along, as strings


def manifest_format(uri: str) -> str | None:
    """'parquet', 'csv' or 'json' when `uri` names a manifest by its suffix, else None."""
    return MANIFEST_FORMATS.get(PurePosixPath(uri.split("?", 1)[0]).suffix.lower())


# ---------------------------------------------------------------------- manifests
class Manifest:
    """A table of videos read in chunks: its rows' URIs resolved against its folder."""

    def __init__(self, uri: str, text_columns: tuple[str, ...] = ()):
        fmt = manifest_format(uri)
        if fmt is None:
            raise ListingError(f"not a manifest (.parquet, .csv, .jsonl): {uri}")
        self.uri, self.format = uri, fmt
        self.text_columns = ("uri", "bucket", "key", *VERSION_COLUMNS, *text_columns)
        self.store = store_for(uri)
        self.folder = self.store.parent(uri)

    def batches(self, rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
        """The manifest's rows, `rows` at a time; ListingError (one line) if unreadable."""
        import pyarrow.csv
        import pyarrow.json
        import pyarrow.parquet as pq

        try:
            stream = self.store.open_input(self.uri)
        except FileNotFoundError:
            raise ListingError(f"manifest not found: {self.uri}") from None
        except Exception as e:
            raise ListingError(f"cannot read manifest {self.uri}: {one_line(e)}") from None
        try:
            with stream:
                if self.format == "parquet":
                    reader = pq.ParquetFile(stream).iter_batches(batch_size=rows)
                elif self.format == "csv":
                    text = {c: pa.string() for c in self.text_columns}
                    reader = pyarrow.csv.open_csv(
                        stream, read_options=pyarrow.csv.ReadOptions(block_size=1 << 20),
                        convert_options=pyarrow.csv.ConvertOptions(column_types=text))
                else:
                    reader = pyarrow.json.open_json(stream)
                for batch in reader:
                    for start in range(0, batch.num_rows, rows):
                        yield batch.slice(start, rows)
        except (pa.ArrowInvalid, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ListingError(f"cannot read manifest {self.uri} as {self.format}: {first}") \
                from None

    @staticmethod
    def column(batch: pa.RecordBatch, name: str) -> list | None:
        """A column's values as strings (None where empty), or None without such a column."""
        if name not in batch.schema.names:
            return None
        return batch.column(name).cast(pa.string()).to_pylist()

    def uris(self, batch: pa.RecordBatch) -> list[str | None]:
        """Each row's video URI, canonical (None for a row without one)."""
        uris = self.column(batch, "uri")
        if uris is None:
            buckets, keys = self.column(batch, "bucket"), self.column(batch, "key")
            if buckets is None or keys is None:
                raise ListingError(
                    f"manifest {self.uri} needs a 'uri' column (or 'bucket' and 'key'); "
                    f"it has: {', '.join(batch.schema.names) or 'no columns'}"
                )
            uris = [f"s3://{b}/{k}" if b and k else None
                    for b, k in zip(buckets, keys, strict=True)]
        return [resolve(u.strip(), self.folder) if u and u.strip() else None for u in uris]


def _stat_entry(uri: str) -> Entry:
    """The object's version and size, or an error entry saying why it has none."""
    try:
        info = store_for(uri).stat(uri)
        return Entry(info.uri, info.version, info.size)
    except FileNotFoundError:
        return Entry(uri, error_kind=ErrorKind.MISSING, error_message="the object does not exist")
    except Exception as e:  # AccessDenied, throttling after retries, a bad URI, ...
        return Entry(uri, error_kind=ErrorKind.READ_ERROR,
                     error_message=f"cannot stat: {one_line(e, with_type=True)}")


def _manifest_entries(uri: str, stats: ListingStats, rows: int,
                      keep: tuple[str, ...]) -> Iterator[list[Entry]]:
    manifest = Manifest(uri, text_columns=keep)
    with ThreadPoolExecutor(STAT_WORKERS) as pool:
        for batch in manifest.batches(rows):
            missing = [name for name in keep if name not in batch.schema.names]
            if missing:
                raise ListingError(
                    f"--keep-columns: manifest {uri} has no column {', '.join(missing)}; it "
                    f"has: {', '.join(batch.schema.names)}")
            kept = list(zip(*(manifest.column(batch, name) for name in keep), strict=True)) \
                if keep else [()] * batch.num_rows
            uris = manifest.uris(batch)
            versions = next((c for c in (manifest.column(batch, n) for n in VERSION_COLUMNS)
                             if c is not None), [None] * len(uris))
            sizes = manifest.column(batch, "size") or [None] * len(uris)
            known: list[Entry | tuple] = []
            to_stat: list[str] = []
            for u, v, s, k in zip(uris, versions, sizes, kept, strict=True):
                if u is None:
                    stats.invalid_rows += 1
                elif v and s not in (None, ""):
                    known.append(Entry(u, str(v).strip('"'), int(float(s)), kept=tuple(k)))
                else:
                    known.append(tuple(k))  # stat-ed below, in parallel
                    to_stat.append(u)
            stat_ed = iter(pool.map(_stat_entry, to_stat))
            yield [k if isinstance(k, Entry) else dataclasses.replace(next(stat_ed), kept=k)
                   for k in known]


# ---------------------------------------------------------------------- folders
def _local_entry(path: str) -> Entry:
    """A directory entry with a video's name, or an error entry saying why it is no video."""
    try:
        uri = path.encode("utf-8").decode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        return Entry(shown, error_kind=ErrorKind.BAD_NAME,
                     error_message="the file name is not valid UTF-8; rename the file")
    try:
        st = os.stat(path)  # follows links
    except FileNotFoundError:
        return Entry(uri, error_kind=ErrorKind.MISSING,
                     error_message="a symbolic link to nothing (dangling)")
    except OSError as e:
        why = "a symbolic link loop" if e.errno == errno.ELOOP else e.strerror
        return Entry(uri, error_kind=ErrorKind.READ_ERROR, error_message=f"cannot stat: {why}")
    if not stat_mod.S_ISREG(st.st_mode):
        return Entry(uri, error_kind=ErrorKind.NOT_A_FILE,
                     error_message="not a regular file (a directory, FIFO or device)")
    return Entry(uri, f"{st.st_size}-{st.st_mtime_ns}", st.st_size)


def _walk(root: str, suffixes: tuple[str, ...]) -> Iterator[Entry]:
    lowered = tuple(s.lower() for s in suffixes)
    # os.walk puts everything that is not a directory (FIFOs, dangling links, link loops)
    # among the files: each becomes an entry, an error one where it is not a regular file.
    # Links to directories are not followed (no loops); hidden names are skipped.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(lowered):
                yield _local_entry(os.path.join(dirpath, name))


def _chunks(entries: Iterator[Entry], rows: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _folder_entries(uri: str, suffixes: tuple[str, ...]) -> Iterator[Entry]:
    store = store_for(uri)
    if uri.startswith("s3://"):
        for info in store.list(uri, suffixes):
            yield Entry(info.uri, info.version, info.size)
    else:
        yield from _walk(str(local_path(uri)), suffixes)


# ---------------------------------------------------------------------- the listing
def input_schema(keep: tuple[str, ...] = ()) -> pa.Schema:
    """`INPUT_SCHEMA` with the manifest columns a run carries (strings)."""
    return pa.schema([*INPUT_SCHEMA, *(pa.field(name, pa.string()) for name in keep)])


def _table(entries: list[Entry], keep: tuple[str, ...]) -> pa.Table:
    columns = {
        "uri": [e.uri for e in entries],
        "version": [e.version for e in entries],
        "size": [e.size for e in entries],
        "error_kind": [None if e.error_kind is None else e.error_kind.value for e in entries],
        "error_message": [e.error_message for e in entries],
    }
    for i, name in enumerate(keep):
        columns[name] = [e.kept[i] for e in entries]
    return pa.table(columns, schema=input_schema(keep))


def _distinct(entries: list[Entry], stats: ListingStats) -> list[Entry]:
    keys = hash_keys([e.uri for e in entries])
    seen = stats._seen.known(keys)
    out, fresh = [], []
    for entry, key, dup in zip(entries, keys, seen, strict=True):
        if dup or key in fresh:
            stats.duplicates += 1
            continue
        fresh.append(key)
        out.append(entry)
    stats._seen.add(fresh)
    stats.listed += len(out)
    return out


def iter_inputs(uri: str, stats: ListingStats, *, rows: int = CHUNK_ROWS,
                suffixes: tuple[str, ...] = VIDEO_SUFFIXES,
                keep: tuple[str, ...] = ()) -> Iterator[pa.Table]:
    """Chunks (Arrow tables, `input_schema(keep)`) of the distinct inputs under `uri`;
    `keep` names manifest columns to carry along (only a manifest has any).

    Raises ListingError (one line) when `uri` cannot be listed at all; `stats`
    counts what has been listed so far.
    """
    store = store_for(uri)
    uri = store.normalize(uri)
    try:
        kind = store.kind(uri)
    except Exception as e:  # credentials, endpoint, permissions
        raise ListingError(f"cannot read {uri}: {one_line(e)}") from None
    if manifest_format(uri) is not None:
        if kind != "object":
            raise ListingError(f"manifest not found: {uri}")
        stats.kind = "manifest"
        chunks = _manifest_entries(uri, stats, rows, keep)
    elif kind == "object":
        stats.kind = "file"
        chunks = iter([[_stat_entry(uri)]])
    elif kind == "container":
        stats.kind = store.container_word
        chunks = _chunks(_folder_entries(uri, suffixes), rows)
    else:
        raise ListingError(f"input not found: {uri}")
    if keep and stats.kind != "manifest":
        raise ListingError(f"--keep-columns needs a manifest input; {uri} is a {stats.kind}")
    try:
        for chunk in chunks:
            distinct = _distinct(chunk, stats)
            if distinct:
                yield _table(distinct, keep)
    except LabelError:
        raise
    except Exception as e:  # a listing page that fails after the store's retries
        raise ListingError(f"listing {uri} failed after {stats.listed} inputs: "
                           f"{one_line(e)}; rerun to resume") from None
    if stats.listed == 0:
        examples = ", ".join(suffixes[:4])
        what = "rows" if stats.kind == "manifest" else f"video files ({examples}, ...)"
        raise ListingError(f"no {what} found in {uri}")


@dataclass(frozen=True)
class Listing:
    """All inputs at once (for small inputs and tests): entries and what was dropped."""

    entries: list[Entry]
    kind: str
    duplicates: int = 0
    invalid_rows: int = 0


def list_inputs(uri: str, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> Listing:
    """Every input under `uri` in one list (see `iter_inputs`)."""
    stats = ListingStats()
    entries = [Entry(r["uri"], r["version"], r["size"],
                     None if r["error_kind"] is None else ErrorKind(r["error_kind"]),
                     r["error_message"])
               for table in iter_inputs(uri, stats, suffixes=suffixes)
               for r in table.to_pylist()]
    return Listing(entries, stats.kind, stats.duplicates, stats.invalid_rows)
