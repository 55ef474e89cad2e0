"""The one storage layer: local paths and `s3://` URIs, for reading, listing and writing.

S3 follows the standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
`AWS_ENDPOINT_URL` for S3-compatible stores, ...), read by boto3 itself, so
credentials never pass through this code or its logs. Transient S3 errors are
retried by botocore's standard retry mode.
"""

from __future__ import annotations

import functools
import io
import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

S3_RETRIES = {"mode": "standard", "max_attempts": 8}
# Ranged reads: how far a buffered stream reads ahead per GET, and how often
# one GET is repeated when its body breaks off mid-stream (botocore retries
# the request, not the reading of a streamed body).
READ_AHEAD = 8 * 1024 * 1024
BODY_RETRIES = 3
PRESIGN_EXPIRES_S = 3600  # longer than any per-video decode timeout
# videos larger than this are streamed by FFmpeg rather than read into memory whole
STREAM_THRESHOLD = 64 * 1024 * 1024
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


class SourceChangedError(OSError):
    """The object's bytes no longer match the version it was listed with."""


class StorageReadError(OSError):
    """S3 refused or failed a read (after botocore's retries)."""


@dataclass(frozen=True)
class ObjectInfo:
    """An input object: where it is, its size, and the version that identifies its bytes.

    `version` is the S3 ETag, or `"<size>-<mtime_ns>"` for a local file, so a
    rewritten object counts as a new input and an unchanged one does not.
    """

    uri: str
    size: int
    version: str


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri}")
    return bucket, key


def local_path(uri: str) -> Path:
    """A local URI (`/a/b`, `a/b` or `file:///a/b`) as a Path."""
    return Path(uri[len("file://") :] if uri.startswith("file://") else uri)


def join(base: str, name: str) -> str:
    """Join a directory URI and a relative name, for local paths and S3 alike."""
    if is_s3(base):
        return base.rstrip("/") + "/" + name.lstrip("/")
    return str(local_path(base) / name)


@functools.cache
def s3_client():
    """A boto3 S3 client, one per process (clients are thread-safe and costly to make)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries=S3_RETRIES, max_pool_connections=32))


def _client_error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def _get_object(uri: str, version: str | None = None, byte_range: str | None = None) -> bytes:
    """One GET (optionally ranged, optionally pinned to an ETag), body read included.

    FileNotFoundError for a missing object, SourceChangedError when the ETag no
    longer matches, StorageReadError for any other failure: all OSErrors, so a
    decoder reading through a stream can tell storage failures from bad video.
    A body that breaks off mid-stream is fetched again.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    bucket, key = split_s3(uri)
    args: dict = {"Bucket": bucket, "Key": key}
    if version:
        args["IfMatch"] = f'"{version}"'
    if byte_range:
        args["Range"] = byte_range
    for attempt in range(BODY_RETRIES):
        try:
            return s3_client().get_object(**args)["Body"].read()
        except ClientError as e:
            code = _client_error_code(e)
            if code in NOT_FOUND_CODES:
                raise FileNotFoundError(uri) from None
            if code == "PreconditionFailed":
                raise SourceChangedError(f"{uri} changed since it was listed") from None
            raise StorageReadError(f"{uri}: {code or e}") from e
        except (IncompleteReadError, ReadTimeoutError, ResponseStreamingError) as e:
            if attempt == BODY_RETRIES - 1:
                raise StorageReadError(f"{uri}: {e}") from e
        except BotoCoreError as e:  # connection refused, endpoint unreachable, ...
            raise StorageReadError(f"{uri}: {e}") from e
    raise AssertionError("unreachable")


def stat(uri: str) -> ObjectInfo:
    """Size and version of one object; FileNotFoundError if it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _client_error_code(e) in NOT_FOUND_CODES:
                raise FileNotFoundError(uri) from None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))
    st = local_path(uri).stat()
    return ObjectInfo(uri, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


def read_bytes(uri: str, version: str | None = None) -> bytes:
    """The whole object; FileNotFoundError if it does not exist.

    With `version` (an S3 ETag) the read fails with SourceChangedError if the
    object was rewritten since it was listed, so a row never pairs one
    version's id with another version's content.
    """
    if is_s3(uri):
        return _get_object(uri, version)
    return local_path(uri).read_bytes()


class RangedReader(io.RawIOBase):
    """A seekable, read-only stream over an S3 object, served by ranged GETs.

    Each `readinto` fetches just the bytes asked for (wrap it in
    `io.BufferedReader` to read in sensible chunks), so a reader that seeks,
    such as pyarrow reading a Parquet footer and a few columns, fetches only
    what it reads. Every GET is pinned to `version` (If-Match), so all ranges
    come from the same object version.
    """

    def __init__(self, uri: str, size: int, version: str | None = None):
        super().__init__()
        split_s3(uri)  # validates the URI now rather than at the first read
        self.uri = uri
        self.size = size
        self.version = version
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence: {whence}")
        if pos < 0:
            raise OSError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _range(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the object."""
        return _get_object(self.uri, self.version, f"bytes={start}-{end - 1}")

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            return 0
        data = self._range(self._pos, self._pos + n)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readall(self) -> bytes:
        start, end = self._pos, self.size
        if start >= end:
            return b""
        data = self._range(start, end)
        self._pos = end
        return data


def open_input(uri: str, *, size: int | None = None, version: str | None = None) -> BinaryIO:
    """A seekable binary stream over the object, for readers that take file objects.

    S3 objects come through a buffered `RangedReader`, so a reader that seeks
    (pyarrow reading a Parquet footer and a few columns) fetches only what it
    reads. `size` and `version` are what the listing said; without a size the
    object is stat-ed first. Local files open directly.
    """
    if not is_s3(uri):
        return open(local_path(uri), "rb")
    if size is None:
        info = stat(uri)
        size, version = info.size, version or info.version
    return io.BufferedReader(RangedReader(uri, size, version), buffer_size=READ_AHEAD)


def video_source(
    uri: str,
    *,
    size: int | None = None,
    version: str | None = None,
    stream_threshold: int = STREAM_THRESHOLD,
) -> str | BinaryIO:
    """What a decoder should read for `uri`: a local path, the bytes, or a signed URL.

    Local files are passed as paths (FFmpeg reads and seeks them itself). S3
    objects up to `stream_threshold` bytes are fetched with one GET, pinned to
    `version` when given. Larger ones become a presigned URL: FFmpeg reads the
    video as a stream and seeks with ranged GETs, so memory stays bounded by
    its buffers whatever the video's size. Without `size`, S3 objects are
    stat-ed first. A local path that is not a regular file raises
    IsADirectoryError; a missing one FileNotFoundError.
    """
    if not is_s3(uri):
        path = local_path(uri)
        if not stat_mod.S_ISREG(os.stat(path).st_mode):
            raise IsADirectoryError(f"not a regular file: {uri}")
        return str(path)
    if size is None:
        size = stat(uri).size
    if size > stream_threshold:
        return presigned_url(uri)
    return io.BytesIO(read_bytes(uri, version))


def presigned_url(uri: str, expires_s: int = PRESIGN_EXPIRES_S) -> str:
    """A URL that lets FFmpeg GET the object (ranges included) without our credentials.

    It carries a signature valid for this one object until it expires, never
    the secret key; callers keep it out of logs and rows all the same.
    """
    bucket, key = split_s3(uri)
    return s3_client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object (creating local parent directories)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def upload_file(local: str | Path, uri: str) -> None:
    """Publish a finished local file at `uri`, all or nothing.

    S3: boto3's managed upload (multipart for big files) only makes the object
    visible once complete. Local: rename within the destination's filesystem,
    so readers never see a half-written file.
    """
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().upload_file(str(local), bucket, key)
        return
    dest = local_path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, dest)


def delete(uri: str) -> None:
    """Remove an object or local file; a missing one is not an error."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def list_objects(prefix: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
    """Objects under a local directory or an `s3://bucket/prefix/`, in key order.

    Hidden files (a name starting with '.') are skipped; `suffixes` keeps only
    names ending in one of them (case-insensitive).
    """

    def wanted(name: str) -> bool:
        base = name.rsplit("/", 1)[-1]
        if not base or base.startswith("."):
            return False
        return suffixes is None or base.lower().endswith(tuple(s.lower() for s in suffixes))

    if is_s3(prefix):
        bucket, key_prefix = split_s3(prefix)
        pages = s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key_prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                if wanted(obj["Key"]):
                    uri = f"s3://{bucket}/{obj['Key']}"
                    yield ObjectInfo(uri, int(obj["Size"]), obj["ETag"].strip('"'))
        return
    root = local_path(prefix)
    if not root.is_dir():
        raise NotADirectoryError(f"input directory not found: {prefix}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if wanted(name) and path.is_file():
                st = path.stat()
                yield ObjectInfo(str(path), st.st_size, f"{st.st_size}-{st.st_mtime_ns}")
