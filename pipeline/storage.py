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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

S3_RETRIES = {"mode": "standard", "max_attempts": 8}


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


def stat(uri: str) -> ObjectInfo:
    """Size and version of one object; FileNotFoundError if it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))
    st = local_path(uri).stat()
    return ObjectInfo(uri, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


def read_bytes(uri: str) -> bytes:
    """The whole object; FileNotFoundError if it does not exist."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise
    return local_path(uri).read_bytes()


def open_input(uri: str) -> BinaryIO:
    """A seekable binary stream over the object (for decoders that take file objects)."""
    if is_s3(uri):
        return io.BytesIO(read_bytes(uri))
    return open(local_path(uri), "rb")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object (creating local parent directories)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


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
