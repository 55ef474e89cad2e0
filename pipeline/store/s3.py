"""S3 and S3-compatible stores (`s3://bucket/key`).

The standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`,
`AWS_ENDPOINT_URL` for S3-compatible stores, ...) are read by boto3 itself,
so credentials never pass through this code or its logs. A request that
fails is retried by botocore's standard retry mode, a body that breaks off
by `get_object`, both with backoff; what still fails is a `StorageReadError`
(an OSError), never taken for a bad video.
"""

from __future__ import annotations

import functools
import io
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.store.base import (
    Kind,
    ObjectInfo,
    SourceChangedError,
    StorageReadError,
    Store,
    wanted,
)

S3_RETRIES = {"mode": "standard", "max_attempts": 8}
READ_TIMEOUT_ENV = "TSM_S3_READ_TIMEOUT"  # seconds before a hanging request is retried (60)
# botocore retries a request that fails (5xx, throttling, a refused connection); not a body
# that breaks off mid-stream. Those are fetched again here, with the same backoff.
BODY_RETRIES = 5
BACKOFF_S = 0.2  # doubled at each retry, with jitter
NOT_FOUND_CODES = ("404", "NoSuchKey", "NotFound")
BLOCK = 64 * 1024  # the smallest ranged GET
MAX_AHEAD = 2 * 1024 * 1024  # read-ahead grows to this while reads are sequential


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

    read_timeout = float(os.environ.get(READ_TIMEOUT_ENV, "60"))
    return boto3.client("s3", config=Config(retries=S3_RETRIES, max_pool_connections=32,
                                            connect_timeout=10, read_timeout=read_timeout))


def _error_code(e: Exception) -> str:
    return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))


def get_object(uri: str, version: str | None = None,
               byte_range: tuple[int, int] | None = None) -> tuple[bytes, int]:
    """One GET (optionally bytes [start, end), optionally pinned to an ETag): `(body, retries)`.

    FileNotFoundError for a missing object, SourceChangedError when the ETag no
    longer matches, StorageReadError once retries are spent: all OSErrors, so a
    decoder reading through a stream can tell a storage failure from a bad video.
    `retries` counts the requests that were repeated (botocore's and ours).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    args: dict = {"Bucket": bucket, "Key": key}
    if version:
        args["IfMatch"] = f'"{version}"'
    if byte_range:
        args["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
    retries = 0
    for attempt in range(BODY_RETRIES + 1):
        try:
            resp = s3_client().get_object(**args)
            retries += resp.get("ResponseMetadata", {}).get("RetryAttempts", 0)
            body = resp["Body"].read()
            if byte_range and len(body) != byte_range[1] - byte_range[0]:
                raise StorageReadError(f"{uri}: a short body ({len(body)} bytes)")
            return body, retries
        except ClientError as e:
            code = _error_code(e)
            if code in NOT_FOUND_CODES:
                raise FileNotFoundError(uri) from None
            if code == "PreconditionFailed":
                raise SourceChangedError(f"{uri} changed since it was listed") from None
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise PermissionError(f"{uri}: {code}") from None
            error: Exception = e  # 5xx or throttling after botocore's own retries
        except (BotoCoreError, StorageReadError, ConnectionError) as e:  # broken body, reset
            error = e
        if attempt == BODY_RETRIES:
            raise StorageReadError(f"{uri}: {_error_code(error) or error}") from error
        retries += 1
        time.sleep(BACKOFF_S * 2 ** attempt * random.uniform(0.5, 1.0))
    raise AssertionError("unreachable")


class RangedReader(io.RawIOBase):
    """A seekable, read-only stream over an S3 object, served by ranged GETs.

    Reads are served from a window fetched with one GET, at least `BLOCK`
    bytes; while reads go on sequentially the window doubles up to
    `MAX_AHEAD`, and a seek starts small again. So a reader that seeks (a
    demuxer reading an index and a few frames, pyarrow reading a Parquet
    footer and a few columns) fetches little more than it reads, in few
    requests. Every GET is pinned to `version` (If-Match), so all ranges come
    from the same object version. `bytes_read` and `retries` count the
    fetching.
    """

    def __init__(self, uri: str, size: int, version: str | None = None):
        super().__init__()
        split_s3(uri)  # validates the URI now rather than at the first read
        self.uri, self.size, self.version = uri, size, version
        self.bytes_read = self.retries = 0
        self._pos = 0
        self._window = b""
        self._window_start = 0
        self._ahead = BLOCK

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

    def _fetch(self, start: int, end: int) -> None:
        body, retries = get_object(self.uri, self.version, (start, end))
        self.bytes_read += len(body)
        self.retries += retries
        self._window, self._window_start = body, start

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self._pos)
        if n <= 0:
            return 0
        offset = self._pos - self._window_start
        if not offset >= 0 or offset + n > len(self._window):
            sequential = self._pos == self._window_start + len(self._window)
            self._ahead = min(2 * self._ahead, MAX_AHEAD) if sequential else BLOCK
            self._fetch(self._pos, min(self.size, self._pos + max(n, self._ahead)))
            offset = 0
        view[:n] = self._window[offset : offset + n]
        self._pos += n
        return n


class CountedBytes(io.BytesIO):
    """An object read whole by one GET, with the same counters as `RangedReader`."""

    def __init__(self, data: bytes, retries: int):
        super().__init__(data)
        self.bytes_read, self.retries = len(data), retries


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
        return get_object(uri, version)[0]

    def open_input(self, uri: str, *, size: int | None = None,
                   version: str | None = None) -> BinaryIO:
        if size is None:
            info = self.stat(uri)
            size, version = info.size, version or info.version
        return RangedReader(uri, size, version)

    def open_video(self, obj: ObjectInfo, whole_below: int) -> BinaryIO:
        # small objects: one GET pinned to the listed version (fewer requests than reading
        # parts); larger ones: ranged GETs of what the decoder reads, memory bounded
        size = obj.size if obj.size >= 0 else self.stat(obj.uri).size
        if size > whole_below:
            return RangedReader(obj.uri, size, obj.version or None)
        return CountedBytes(*get_object(obj.uri, obj.version or None))

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
