"""What to label: a local directory, an `s3://bucket/prefix/`, one video, or a manifest.

A manifest is a Parquet, CSV or JSON-lines file (local or on S3) with a `uri`
column, or `bucket` and `key` columns as S3 Inventory writes them. Optional
columns `etag` / `e_tag` / `version` / `source_version` and `size` save a
HEAD request per object; without them each object is stat-ed (in parallel).
Inputs are deduplicated by URI, first occurrence wins, so a manifest naming a
video twice still yields one output row.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa

from pipeline import storage
from pipeline.storage import ObjectInfo

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


class ListingError(ValueError):
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


def _read_table(uri: str, fmt: str) -> pa.Table:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise ListingError(f"manifest not found: {uri}") from None
    try:
        if fmt == "parquet":
            return pq.read_table(pa.BufferReader(data))
        if fmt == "csv":
            # URIs, keys and ETags are text even when they look like numbers
            text_cols = ("uri", "bucket", "key", *VERSION_COLUMNS)
            opts = pyarrow.csv.ConvertOptions(column_types={c: pa.string() for c in text_cols})
            return pyarrow.csv.read_csv(io.BytesIO(data), convert_options=opts)
        return pyarrow.json.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ListingError(f"cannot read manifest {uri} as {fmt}: {first}") from None


def _column(table: pa.Table, name: str) -> list | None:
    if name not in table.column_names:
        return None
    return table.column(name).cast(pa.string()).to_pylist()


def _resolve(uri: str, base: str) -> str:
    """A manifest entry as a full URI: relative paths are relative to the manifest."""
    if storage.is_s3(uri) or uri.startswith("/") or uri.startswith("file://"):
        return uri
    return storage.join(base, uri)


def _stat_or_missing(uri: str) -> ObjectInfo:
    try:
        return storage.stat(uri)
    except Exception:
        # missing or unreadable now (S3 AccessDenied, throttling after retries, a
        # directory, ...): one object must not sink the whole manifest; the decode
        # stage tries it and writes an error row saying why. Once it can be read,
        # its real version differs from this placeholder, so a rerun labels it.
        return ObjectInfo(uri, -1, MISSING_VERSION)


def read_manifest(uri: str) -> Listing:
    """The videos a manifest names, with sizes and versions (from its columns or a stat)."""
    fmt = manifest_format(uri)
    if fmt is None:
        raise ListingError(f"not a manifest (.parquet, .csv, .jsonl): {uri}")
    table = _read_table(uri, fmt)
    uris = _column(table, "uri")
    if uris is None:
        buckets, keys = _column(table, "bucket"), _column(table, "key")
        if buckets is None or keys is None:
            raise ListingError(
                f"manifest {uri} needs a 'uri' column (or 'bucket' and 'key'); "
                f"it has: {', '.join(table.column_names) or 'no columns'}"
            )
        uris = [f"s3://{b}/{k}" if b and k else None for b, k in zip(buckets, keys, strict=True)]
    versions = next(
        (col for col in (_column(table, c) for c in VERSION_COLUMNS) if col is not None),
        [None] * len(uris),
    )
    sizes = _column(table, "size") or [None] * len(uris)
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    known: list[ObjectInfo | None] = []
    to_stat: list[str] = []
    invalid = 0
    for u, v, s in zip(uris, versions, sizes, strict=True):
        if u is None or not str(u).strip():
            invalid += 1
            continue
        full = _resolve(str(u).strip(), base)
        if v and s not in (None, ""):
            known.append(ObjectInfo(full, int(float(s)), str(v).strip('"')))
        else:
            known.append(None)
            to_stat.append(full)
    # resolve versions before deduplication so every kept entry has one
    with ThreadPoolExecutor(STAT_WORKERS) as pool:
        stats = iter(pool.map(_stat_or_missing, to_stat))
    objects = [k if k is not None else next(stats) for k in known]
    objects, dupes = dedupe(objects)
    return Listing(objects, "manifest", duplicates=dupes, invalid_rows=invalid)


def list_inputs(uri: str, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> Listing:
    """Everything to label under `uri`: a manifest, a directory/prefix, or one video file.

    Raises ListingError with a one-line reason when nothing can be listed.
    Local paths are made absolute, so `videos/`, `./videos` and the same folder
    named from another working directory give the same URIs (and resume keys).
    """
    if not storage.is_s3(uri):
        uri = os.path.abspath(storage.local_path(uri))
    if manifest_format(uri) is not None:
        if not _is_object(uri):
            raise ListingError(f"manifest not found: {uri}")
        listing = read_manifest(uri)
    elif storage.is_s3(uri):
        _, key = storage.split_s3(uri)
        prefix = uri if (not key or key.endswith("/")) else uri + "/"
        if key and not key.endswith("/") and _is_object(uri):
            listing = Listing([storage.stat(uri)], "file")
        else:
            try:
                objects, dupes = dedupe(storage.list_objects(prefix, suffixes))
            except Exception as e:
                raise ListingError(f"cannot list {prefix}: {_one_line(e)}") from None
            listing = Listing(objects, "prefix", duplicates=dupes)
    else:
        path = storage.local_path(uri)
        if path.is_file():
            listing = Listing([storage.stat(str(path))], "file")
        elif path.is_dir():
            objects, dupes = dedupe(storage.list_objects(str(path), suffixes))
            listing = Listing(objects, "directory", duplicates=dupes)
        else:
            raise ListingError(f"input not found: {uri}")
    if not listing.objects:
        examples = ", ".join(suffixes[:4])
        what = "rows" if listing.kind == "manifest" else f"video files ({examples}, ...)"
        raise ListingError(f"no {what} found in {uri}")
    return listing


def _is_object(uri: str) -> bool:
    if not storage.is_s3(uri):
        return storage.local_path(uri).is_file()
    try:
        storage.stat(uri)
        return True
    except FileNotFoundError:
        return False
    except Exception as e:
        raise ListingError(f"cannot read {uri}: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
