"""The storage interface: what the label job needs from wherever videos and outputs live.

Listing, reading videos and manifests, resume and the sink all go through a
`Store`; which one is chosen once from the URI (`pipeline.store.store_for`),
so no other code asks whether a URI is local or on S3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal


class SourceChangedError(OSError):
    """The object's bytes no longer match the version it was listed with."""


class StorageReadError(OSError):
    """The store refused or failed a read (after retries)."""


class NotAFileError(OSError):
    """A path that exists but is no regular file (a directory, a FIFO, a device)."""


@dataclass(frozen=True)
class ObjectInfo:
    """An input object: where it is, its size, and the version that identifies its bytes.

    `version` is the S3 ETag, or `"<size>-<mtime_ns>"` for a local file, so a
    rewritten object counts as a new input and an unchanged one does not.
    """

    uri: str
    size: int
    version: str


Kind = Literal["object", "container", "missing"]


class Store(ABC):
    """One storage backend. URIs are strings; `normalize` gives the canonical form."""

    container_word: str  # what users call a folder here: "directory" or "prefix"

    @abstractmethod
    def normalize(self, uri: str) -> str:
        """The canonical URI, so one object has one name (and one resume key)."""

    @abstractmethod
    def join(self, base: str, name: str) -> str:
        """`name` (relative) inside the folder `base`."""

    @abstractmethod
    def parent(self, uri: str) -> str:
        """The folder holding `uri`."""

    @abstractmethod
    def kind(self, uri: str) -> Kind:
        """Whether `uri` names one object, a folder/prefix, or nothing."""

    @abstractmethod
    def stat(self, uri: str) -> ObjectInfo:
        """Size and version of one object; FileNotFoundError if it does not exist."""

    def is_object(self, uri: str) -> bool:
        return self.kind(uri) == "object"

    @abstractmethod
    def list(self, prefix: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
        """Objects under a folder/prefix in key order; hidden names (a leading '.') skipped,
        and with `suffixes` only names ending in one of them (case-insensitive)."""

    @abstractmethod
    def read_bytes(self, uri: str, version: str | None = None) -> bytes:
        """The whole object. With `version`, SourceChangedError if it was rewritten since."""

    @abstractmethod
    def open_input(self, uri: str, *, size: int | None = None,
                   version: str | None = None) -> BinaryIO:
        """A seekable binary stream that reads only what its reader asks for."""

    @abstractmethod
    def open_video(self, obj: ObjectInfo, whole_below: int) -> BinaryIO:
        """A seekable stream over a video for a decoder, counting what it fetches
        (`bytes_read`, `retries`); objects over `whole_below` bytes are never held whole.
        NotAFileError for something that is not a regular file."""

    @abstractmethod
    def staging_path(self, uri: str) -> Path:
        """A new local scratch file that `publish(path, uri)` can commit all or nothing."""

    @abstractmethod
    def publish(self, local: Path, uri: str) -> None:
        """Make the finished local file visible at `uri` in one step (rename or one upload)."""

    @abstractmethod
    def clean_staging(self, folder: str, pattern: str) -> int:
        """Remove scratch files matching `pattern` that a killed writer left in `folder`."""

    @abstractmethod
    def lease(self, folder: str, run_id: str):
        """The one-writer lease on `folder` for `run_id` (`pipeline.lease`), not yet acquired."""


def wanted(name: str, suffixes: tuple[str, ...] | None) -> bool:
    """The listing rule shared by every store: no hidden files, optional suffix filter."""
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith("."):
        return False
    return suffixes is None or base.lower().endswith(tuple(s.lower() for s in suffixes))
