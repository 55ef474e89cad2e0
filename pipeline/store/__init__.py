"""Where videos, manifests and outputs live: local paths or S3, behind one interface.

    store = store_for(uri)     # chosen once from the URI
    store.stat(uri); store.list(prefix); store.open_video(obj, whole_below)
    store.open_input(uri); store.staging_path(uri); store.publish(tmp, uri); store.lease(...)

`store_for` is the one place that looks at a URI's scheme.
"""

from __future__ import annotations

from pipeline.store.base import (
    NotAFileError,
    ObjectInfo,
    SourceChangedError,
    StorageReadError,
    Store,
)
from pipeline.store.local import LocalStore
from pipeline.store.s3 import S3Store

_LOCAL = LocalStore()
_S3 = S3Store()


def store_for(uri: str) -> Store:
    """The store that holds `uri`: S3 for `s3://...`, else the local file system."""
    return _S3 if uri.startswith("s3://") else _LOCAL


def is_absolute(uri: str) -> bool:
    """Whether `uri` names a place on its own (a scheme, or an absolute path)."""
    return "://" in uri or uri.startswith("/")


def resolve(entry: str, base: str) -> str:
    """A manifest entry as a canonical URI; relative entries are relative to the folder `base`."""
    if is_absolute(entry):
        return store_for(entry).normalize(entry)
    store = store_for(base)
    return store.normalize(store.join(base, entry))


__all__ = [
    "LocalStore",
    "NotAFileError",
    "ObjectInfo",
    "S3Store",
    "SourceChangedError",
    "StorageReadError",
    "Store",
    "VideoInput",
    "is_absolute",
    "resolve",
    "store_for",
]
