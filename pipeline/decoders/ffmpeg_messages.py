"""FFmpeg's own words about a bad video, kept out of the console and summarised for rows.

FFmpeg and decord report *why* a file is bad only on the process's stderr
(the exception text says little more than "Error reading"). While decoding,
file descriptor 2 is pointed at a scratch file (`DecoderLog`): the console
stays clean on a corrupt input, and `gist` keeps the gist of what FFmpeg
said for the row's error message, with signed URLs' query strings removed.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading


class _StderrCapture:
    """Process-wide redirect of fd 2 into a scratch file, shared by concurrent users.

    The first user redirects and the last one restores, so concurrent decodes
    in threads are never serialised (their messages may then mix, which only
    blurs the gist of an error message). Each user reads what was written
    since it entered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, int] = {}  # thread ident -> open captures
        self._saved_fd = -1
        self._file = None

    def _restore_if_idle(self) -> None:
        if not self._open and self._saved_fd >= 0:
            os.dup2(self._saved_fd, 2)
            os.close(self._saved_fd)
            self._saved_fd = -1
            self._file.truncate(0)  # the scratch file never grows past one busy spell

    def enter(self) -> int:
        with self._lock:
            if self._saved_fd < 0:
                sys.stderr.flush()
                if self._file is None:
                    # kept open for the life of the process: one scratch file, reused
                    self._file = tempfile.TemporaryFile()  # noqa: SIM115
                self._saved_fd = os.dup(2)
                os.dup2(self._file.fileno(), 2)
            me = threading.get_ident()
            self._open[me] = self._open.get(me, 0) + 1
            return os.lseek(self._file.fileno(), 0, os.SEEK_END)

    def leave(self, offset: int) -> str:
        with self._lock:
            me = threading.get_ident()
            fd = self._file.fileno()
            end = os.lseek(fd, 0, os.SEEK_END)
            # the last 64 KiB: FFmpeg's final lines say why it gave up
            start = max(offset, end - (1 << 16))
            text = os.pread(fd, end - start, start) if end > start else b""
            self._open[me] -= 1
            if self._open[me] == 0:
                del self._open[me]
            self._restore_if_idle()
            return text.decode("utf-8", errors="replace")


_CAPTURE = _StderrCapture()


class DecoderLog:
    """Context manager: FFmpeg/decord stderr output is kept in `.text`, not printed."""

    def __init__(self) -> None:
        self.text = ""
        self._offset: int | None = None

    def __enter__(self) -> DecoderLog:
        self._offset = _CAPTURE.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._offset is not None:
            offset, self._offset = self._offset, None
            self.text = _CAPTURE.leave(offset)


# "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55b8ae794e40] moov atom not found"
_FFMPEG_LINE = re.compile(r"^\[[^\]]* @ 0x[0-9a-fA-F]+\]\s*(.+)$")
# decord's "ERROR opening: <uri or the file's bytes>, <FFmpeg error string>" echoes the
# input itself, so only FFmpeg's standard error strings are taken from it
_FFMPEG_ERRORS = (
    "Invalid data found when processing input",
    "End of file",
    "Permission denied",
    "No such file or directory",
    "Operation not permitted",
    "Invalid argument",
)
# "[06:39:30] /project/src/...cc:218: Check failed: ... Thread worker: Error sending packet."
_DECORD_CHECK = re.compile(r"^(?:\[[0-9:]+\]\s*\S+:\d+:\s*)+(?:Check failed:.*?\)\s*)?(.*)$")
# FFmpeg's words for data that stops early (matched in its own lines only, never in paths)
_TRUNCATION = ("partial file", "ended prematurely", "truncated")


# a URL's query string: where a presigned S3 URL keeps its key id and signature
_URL_QUERY = re.compile(r"(https?://[^\s?]+)\?\S*")


def redact_urls(text: str) -> str:
    """`text` with the query string of every http(s) URL cut off (signatures, key ids)."""
    return _URL_QUERY.sub(r"\1", text)


def _printable(text: str) -> str:
    # the decoder echoes the input's own bytes in some messages; keep them out of rows
    return "".join(c if c.isprintable() else " " for c in text).strip()


def gist(log: str, exc_text: str = "", limit: int = 300) -> str:
    """A short human summary of why decoding failed: FFmpeg's own words, deduplicated."""
    found: list[str] = []
    for raw in log.splitlines():
        m = _FFMPEG_LINE.match(raw.strip())
        if m:
            msg = _printable(m.group(1)).rstrip(".")
            if msg and msg not in found:
                found.append(msg)
    if "ERROR opening" in log:
        found.extend(e for e in _FFMPEG_ERRORS if e in log and e not in found)
    if not found and exc_text:
        last = [ln.strip() for ln in exc_text.splitlines() if ln.strip()]
        if last:
            m = _DECORD_CHECK.match(last[-1])
            found.append(_printable(m.group(1) if m else last[-1]).rstrip("."))
    msg = "; ".join(found[-3:]) if found else "unknown decoder error"
    return redact_urls(msg)[:limit]


def is_truncation(log: str) -> bool:
    for raw in log.splitlines():
        m = _FFMPEG_LINE.match(raw.strip())
        if m and any(marker in m.group(1).lower() for marker in _TRUNCATION):
            return True
    return False
