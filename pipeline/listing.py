"""What to label: a local directory, an `s3://bucket/prefix/`, one video, or a manifest.

A manifest is a Parquet, CSV or JSON-lines file (local or on S3) with a `uri`
column, or `bucket` and `key` columns as S3 Inventory writes them. Optional
columns `etag` / `e_tag` / `version` / `source_version` and `size` save a
HEAD request per object; without them each object is stat-ed (in parallel).
Entries are normalised (relative ones are relative to the manifest) and
deduplicated by URI, first occurrence wins, so a manifest naming a video
twice still yields one output row.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa

from pipeline.errors import LabelError, one_line
from pipeline.store import ObjectInfo, resolve, store_for

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
# version of an object that did not exist when listed; its row becomes an error row
MISSING_VERSION = ""


class ListingError(LabelError):
    """The input cannot be listed (not found, unreadable manifest, no videos); one line."""


@dataclass(frozen=True)
class Listing:
    """The inputs of a run, deduplicated, plus what was dropped on the way."""

    objects: list[ObjectInfo]
    kind: str  # "directory" | "prefix" | "manifest" | "file"
    duplicates: int = 0  # URIs listed more than once (kept once)
    invalid_rows: int = 0  # manifest rows with no usable URI


def manifest_format(uri: str) -> str | None:
    """'parquet', 'csv' or 'json' when `uri` names a manifest by its suffix, else None."""
    return MANIFEST_FORMATS.get(PurePosixPath(uri.split("?", 1)[0]).suffix.lower())


class Manifest:
    """A table of videos: its rows, and their URIs resolved against the manifest's folder."""

    def __init__(self, uri: str, table: pa.Table):
        self.uri = uri
        self.table = table
        self._folder = store_for(uri).parent(uri)

    @classmethod
    def read(cls, uri: str, text_columns: tuple[str, ...] = ()) -> Manifest:
        """Read a manifest; ListingError (one line) if it is missing or unreadable.

        `text_columns` are read as strings even when they look like numbers
        (URIs, keys and ETags always are).
        """
        import pyarrow.csv
        import pyarrow.json
        import pyarrow.parquet as pq

        fmt = manifest_format(uri)
        if fmt is None:
            raise ListingError(f"not a manifest (.parquet, .csv, .jsonl): {uri}")
        try:
            data = store_for(uri).read_bytes(uri)
        except FileNotFoundError:
            raise ListingError(f"manifest not found: {uri}") from None
        except Exception as e:
            raise ListingError(f"cannot read manifest {uri}: {one_line(e)}") from None
        try:
            if fmt == "parquet":
                table = pq.read_table(pa.BufferReader(data))
            elif fmt == "csv":
                text = ("uri", "bucket", "key", *VERSION_COLUMNS, *text_columns)
                opts = pyarrow.csv.ConvertOptions(column_types={c: pa.string() for c in text})
                table = pyarrow.csv.read_csv(io.BytesIO(data), convert_options=opts)
            else:
                table = pyarrow.json.read_json(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ListingError(f"cannot read manifest {uri} as {fmt}: {first}") from None
        return cls(uri, table)

    def column(self, name: str) -> list | None:
        """A column's values as strings (None where empty), or None if there is no such column."""
        if name not in self.table.column_names:
            return None
        return self.table.column(name).cast(pa.string()).to_pylist()

    def uris(self) -> list[str | None]:
        """Each row's video URI, canonical (None for a row without one)."""
        uris = self.column("uri")
        if uris is None:
            buckets, keys = self.column("bucket"), self.column("key")
            if buckets is None or keys is None:
                raise ListingError(
                    f"manifest {self.uri} needs a 'uri' column (or 'bucket' and 'key'); "
                    f"it has: {', '.join(self.table.column_names) or 'no columns'}"
                )
            uris = [f"s3://{b}/{k}" if b and k else None
                    for b, k in zip(buckets, keys, strict=True)]
        return [resolve(u.strip(), self._folder) if u and u.strip() else None for u in uris]


def dedupe(objects: Iterable[ObjectInfo]) -> tuple[list[ObjectInfo], int]:
    """Objects with repeated URIs dropped (first kept), and how many were dropped."""
    seen: set[str] = set()
    out: list[ObjectInfo] = []
    dropped = 0
    for obj in objects:
        if obj.uri in seen:
            dropped += 1
            continue
        seen.add(obj.uri)
        out.append(obj)
    return out, dropped


def _stat_or_missing(uri: str) -> ObjectInfo:
    try:
        return store_for(uri).stat(uri)
    except Exception:
        # missing or unreadable now (S3 AccessDenied, throttling after retries, a
        # directory, ...): one object must not sink the whole manifest; the decode
        # stage tries it and writes an error row saying why. Once it can be read,
        # its real version differs from this placeholder, so a rerun labels it.
        return ObjectInfo(uri, -1, MISSING_VERSION)


def read_manifest(uri: str) -> Listing:
    """The videos a manifest names, with sizes and versions (from its columns or a stat)."""
    manifest = Manifest.read(uri)
    uris = manifest.uris()
    versions = next(
        (col for col in (manifest.column(c) for c in VERSION_COLUMNS) if col is not None),
        [None] * len(uris),
    )
    sizes = manifest.column("size") or [None] * len(uris)
    known: list[ObjectInfo | None] = []
    to_stat: list[str] = []
    invalid = 0
    for u, v, s in zip(uris, versions, sizes, strict=True):
        if u is None:
            invalid += 1
        elif v and s not in (None, ""):
            known.append(ObjectInfo(u, int(float(s)), str(v).strip('"')))
        else:
            known.append(None)
            to_stat.append(u)
    # resolve versions before deduplication so every kept entry has one
    with ThreadPoolExecutor(STAT_WORKERS) as pool:
        stats = iter(pool.map(_stat_or_missing, to_stat))
    objects, dupes = dedupe(k if k is not None else next(stats) for k in known)
    return Listing(objects, "manifest", duplicates=dupes, invalid_rows=invalid)


def list_inputs(uri: str, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> Listing:
    """Everything to label under `uri`: a manifest, a directory/prefix, or one video file.

    Raises ListingError with a one-line reason when nothing can be listed.
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
        listing = read_manifest(uri)
    elif kind == "object":
        listing = Listing([store.stat(uri)], "file")
    elif kind == "container":
        try:
            objects, dupes = dedupe(store.list(uri, suffixes))
        except Exception as e:
            raise ListingError(f"cannot list {uri}: {one_line(e)}") from None
        listing = Listing(objects, store.container_word, duplicates=dupes)
    else:
        raise ListingError(f"input not found: {uri}")
    if not listing.objects:
        examples = ", ".join(suffixes[:4])
        what = "rows" if listing.kind == "manifest" else f"video files ({examples}, ...)"
        raise ListingError(f"no {what} found in {uri}")
    return listing
