"""FFmpeg's own words about a bad video, collected while decoding and summarised for rows.

FFmpeg explains *why* a file is bad in its log ("moov atom not found",
"partial file"), not in the exception (which says little more than "Invalid
data found"). `FFmpegLog` collects the log lines of one decode (PyAV routes
FFmpeg's log into Python, nothing reaches the console) and `gist` keeps the
gist of them for the row's error message, with any URL's query string (a
signature) removed.
"""

from __future__ import annotations

import re

# FFmpeg's words for data that stops early
_TRUNCATION = ("partial file", "ended prematurely", "truncated", "end of file")
# a URL's query string: where a presigned URL keeps its key id and signature
_URL_QUERY = re.compile(r"(https?://[^\s?]+)\?\S*")


def redact_urls(text: str) -> str:
    """`text` with the query string of every http(s) URL cut off (signatures, key ids)."""
    return _URL_QUERY.sub(r"\1", text)


def _printable(text: str) -> str:
    # FFmpeg echoes the input's own bytes in some messages; keep them out of rows
    return "".join(c if c.isprintable() else " " for c in text).strip()


class FFmpegLog:
    """Context manager: FFmpeg's log lines (errors and worse) during the block, in `.lines`."""

    def __init__(self) -> None:
        self._records: list = []
        self._capture = None

    def __enter__(self) -> FFmpegLog:
        import av.logging

        av.logging.set_level(av.logging.ERROR)
        # PyAV drops a message it has logged before: every video needs its own words
        av.logging.set_skip_repeated(False)
        self._capture = av.logging.Capture(local=False)
        self._records = self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(*exc)

    @property
    def lines(self) -> list[str]:
        """What FFmpeg said so far, one message a line."""
        return [_printable(message).rstrip(".") for _, _, message in self._records]


def gist(lines: list[str], fallback: str = "", limit: int = 300) -> str:
    """A short human summary of why decoding failed: FFmpeg's own words, deduplicated."""
    found: list[str] = []
    for line in lines:
        if line and line not in found:
            found.append(line)
    if not found and fallback:
        found.append(_printable(fallback).rstrip("."))
    msg = "; ".join(found[-3:]) if found else "unknown decoder error"
    return redact_urls(msg)[:limit]


def is_truncation(lines: list[str]) -> bool:
    return any(marker in line.lower() for line in lines for marker in _TRUNCATION)
