"""S3 and S3-compatible stores (`s3://bucket/key`).

The standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
`AWS_ENDPOINT_URL` for S3-compatible stores, ...) are read by boto3 itself,
so credentials never pass through this code or its logs. Transient errors
are retried by botocore's standard retry mode.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.store.base import (
    Kind,
    ObjectInfo,
    SourceChangedError,
    StorageReadError,
    Store,
    VideoInput,
    wanted,
)

S3_RETRIES = {"mode": "standard", "max_attempts": 8}
# Ranged reads: how far a buffered stream reads ahead per GET, and how often
# one GET is repeated when its body breaks off mid-stream (botocore retries
# the request, not the reading of a streamed body).
READ_AHEAD = 8 * 1024 * 1024
BODY_RETRIES = 3
PRESIGN_EXPIRES_S = 3600  # longer than any per-video decode timeout
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> `("bucket", "some/key")`."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri}")
    return bucket, key


@functools.cache
def s3_client():
    """A boto3 S3 client, one per process (clients are thread-safe and costly to make)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries=S3_RETRIES, max_pool_connections=32))


def _error_code(e: Exception) -> str:
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
            code = _error_code(e)
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


class S3Store(Store):
    container_word = "prefix"

    def normalize(self, uri: str) -> str:
        split_s3(uri)
        return uri

    def join(self, base: str, name: str) -> str:
        return base.rstrip("/") + "/" + name.lstrip("/")

    def parent(self, uri: str) -> str:
        return uri.rsplit("/", 1)[0]

    def kind(self, uri: str) -> Kind:
        # a prefix need not exist to be listed: anything not an object is a "folder"
        _, key = split_s3(uri)
        if not key or key.endswith("/"):
            return "container"
        try:
            self.stat(uri)
            return "object"
        except FileNotFoundError:
            return "container"

    def stat(self, uri: str) -> ObjectInfo:
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _error_code(e) in NOT_FOUND_CODES:
                raise FileNotFoundError(uri) from None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))

    def list(self, prefix: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
        bucket, key_prefix = split_s3(prefix)
        if key_prefix and not key_prefix.endswith("/"):
            key_prefix += "/"  # a prefix names a folder: `in` must not also list `inbox/`
        pages = s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key_prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                if wanted(obj["Key"], suffixes):
                    uri = f"s3://{bucket}/{obj['Key']}"
                    yield ObjectInfo(uri, int(obj["Size"]), obj["ETag"].strip('"'))

    def read_bytes(self, uri: str, version: str | None = None) -> bytes:
        return _get_object(uri, version)

    def open_input(self, uri: str, *, size: int | None = None,
                   version: str | None = None) -> BinaryIO:
        # buffered: a reader that seeks (a Parquet footer, a few columns) fetches what it reads
        if size is None:
            info = self.stat(uri)
            size, version = info.size, version or info.version
        return io.BufferedReader(RangedReader(uri, size, version), buffer_size=READ_AHEAD)

    def video_input(self, obj: ObjectInfo, stream_threshold: int) -> VideoInput:
        # Small objects: one GET pinned to the listed version, decoded from memory. Larger
        # ones: a presigned URL that FFmpeg reads with ranged GETs, so memory stays bounded
        # by its buffers whatever the video's size.
        size = obj.size if obj.size >= 0 else self.stat(obj.uri).size
        if size > stream_threshold:
            return VideoInput(self.presigned_url(obj.uri), remote_stream=True)
        return VideoInput(io.BytesIO(self.read_bytes(obj.uri, obj.version or None)))

    def presigned_url(self, uri: str, expires_s: int = PRESIGN_EXPIRES_S) -> str:
        """A URL that lets FFmpeg GET the object (ranges included) without our credentials.

        It carries a signature valid for this one object until it expires, never
        the secret key; callers keep it out of logs and rows all the same.
        """
        bucket, key = split_s3(uri)
        return s3_client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
        )

    def staging_path(self, uri: str) -> Path:
        # a local scratch file; the object only appears once the upload completes
        fd, name = tempfile.mkstemp(prefix=f".{uri.rsplit('/', 1)[-1]}.", suffix=".tmp")
        os.close(fd)
        return Path(name)

    def publish(self, local: Path, uri: str) -> None:
        # boto3's managed upload (multipart for big files) makes the object visible whole
        bucket, key = split_s3(uri)
        s3_client().upload_file(str(local), bucket, key)
        Path(local).unlink(missing_ok=True)

    def clean_staging(self, folder: str, pattern: str) -> int:
        return 0  # nothing is ever half-written on S3

    def lease(self, folder: str, run_id: str):
        from pipeline.lease import ConditionalPutLease

        bucket, key = split_s3(self.join(folder, "_lock.json"))
        return ConditionalPutLease(folder, run_id, bucket, key)
