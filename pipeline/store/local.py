"""Local files: paths (`/a/b`, `a/b`) and `file://` URIs, made absolute."""

from __future__ import annotations

import io
import os
import stat as stat_mod
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.store.base import Kind, NotAFileError, ObjectInfo, Store, wanted


def local_path(uri: str) -> Path:
    """A local URI (`/a/b`, `a/b` or `file:///a/b`) as a Path."""
    return Path(uri.removeprefix("file://"))


def _info(path: Path, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(str(path), st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


class CountingFile(io.FileIO):
    """A local file that counts the bytes read from it (`bytes_read`; `retries` is 0)."""

    def __init__(self, path: Path):
        super().__init__(path, "r")
        self.bytes_read = self.retries = 0

    # FileIO's read() does not go through readinto(): both count
    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data or b"")
        return data

    def readinto(self, buffer) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n or 0
        return n


class LocalStore(Store):
    container_word = "directory"

    def normalize(self, uri: str) -> str:
        # absolute, so `videos/`, `./videos` and the same folder named from another working
        # directory give the same URIs (and resume keys)
        return os.path.abspath(local_path(uri))

    def join(self, base: str, name: str) -> str:
        return str(local_path(base) / name)

    def parent(self, uri: str) -> str:
        return str(local_path(uri).parent)

    def kind(self, uri: str) -> Kind:
        path = local_path(uri)
        if path.is_file():
            return "object"
        return "container" if path.is_dir() else "missing"

    def stat(self, uri: str) -> ObjectInfo:
        path = local_path(uri)
        return _info(path, path.stat())

    def list(self, prefix: str, suffixes: tuple[str, ...] | None = None) -> Iterator[ObjectInfo]:
        root = local_path(prefix)
        if not root.is_dir():
            raise NotADirectoryError(f"input directory not found: {prefix}")
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if wanted(name, suffixes) and path.is_file():
                    yield _info(path, path.stat())

    def read_bytes(self, uri: str, version: str | None = None) -> bytes:
        return local_path(uri).read_bytes()

    def open_input(self, uri: str, *, size: int | None = None,
                   version: str | None = None) -> BinaryIO:
        return open(local_path(uri), "rb")

    def open_video(self, obj: ObjectInfo, whole_below: int) -> BinaryIO:
        # checked before opening: opening a FIFO would wait for a writer forever
        path = local_path(obj.uri)
        if not stat_mod.S_ISREG(os.stat(path).st_mode):
            raise NotAFileError(f"not a regular file: {obj.uri}")
        return CountingFile(path)

    def staging_path(self, uri: str) -> Path:
        # hidden, in the destination's own directory: publishing is an atomic rename
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
        # mkstemp makes 0600 files; outputs are shared (other users, other tools): 0644
        os.chmod(name, 0o644)
        return Path(name)

    def publish(self, local: Path, uri: str) -> None:
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local, dest)

    def lease(self, folder: str, run_id: str):
        from pipeline.lease import FlockLease

        return FlockLease(folder, run_id, str(local_path(folder) / ".lock"))

    def clean_staging(self, folder: str, pattern: str) -> int:
        root = local_path(folder)
        if not root.is_dir():
            return 0
        stale = list(root.glob(pattern))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)
