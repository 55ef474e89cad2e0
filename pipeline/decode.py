"""CPU decoding with decord: open a video, sample its segments, decode only those frames.

Failures become `DecodeError(kind, message)` with a machine-readable kind, so
callers can turn any bad input into an error row instead of stopping.

FFmpeg and decord report *why* a file is bad only on the process's stderr
(the exception text says little more than "Error reading"). While decoding,
file descriptor 2 is pointed at a scratch file: the console stays clean on a
corrupt input, and the error message keeps the gist of what FFmpeg said.
"""

from __future__ import annotations

import bisect
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from pipeline.sampling import segment_indices


class DecodeError(Exception):
    """A video that cannot be decoded; `kind` is machine-readable (see the constants below)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# error_kind values this module produces
EMPTY = "empty"  # zero bytes
NO_VIDEO_STREAM = "no_video_stream"  # a container without video (audio-only, ...)
ZERO_FRAMES = "zero_frames"  # a video stream with no decodable frame
TRUNCATED = "truncated"  # the container itself says the data ends early
CORRUPT = "corrupt"  # not a video, or damaged beyond decoding


@dataclass(frozen=True)
class VideoMeta:
    """What the container says about the video stream."""

    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int


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


def _gist(log: str, exc_text: str = "", limit: int = 300) -> str:
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


def _is_truncation(log: str) -> bool:
    for raw in log.splitlines():
        m = _FFMPEG_LINE.match(raw.strip())
        if m and any(marker in m.group(1).lower() for marker in _TRUNCATION):
            return True
    return False


def _source_size(source: str | BinaryIO) -> int | None:
    try:
        if isinstance(source, str | os.PathLike):
            return os.path.getsize(source)
        pos = source.tell()
        size = source.seek(0, os.SEEK_END)
        source.seek(pos)
        return size - pos
    except (OSError, AttributeError, ValueError):
        return None  # unknown: let the decoder find out


def _open(source: str | BinaryIO, num_threads: int):
    """`(VideoReader, what the decoder logged while opening)`; DecodeError if it cannot open."""
    import decord

    if _source_size(source) == 0:
        raise DecodeError(EMPTY, "the file is empty")
    with DecoderLog() as log:
        try:
            vr = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=num_threads)
            error = None
        except OSError:
            # decord reads a file object in Python: a storage failure (S3 gone, the
            # object rewritten) surfaces here and is not the video's fault
            raise
        except Exception as e:  # decord raises RuntimeError/DECORDError with FFmpeg's text
            error = e
    if error is None:
        return vr, log.text
    text = str(error)
    if "cannot find video stream" in text:
        raise DecodeError(NO_VIDEO_STREAM, "no video stream in the file (audio only?)") from None
    kind = TRUNCATED if _is_truncation(log.text) else CORRUPT
    raise DecodeError(kind, f"cannot open as video: {_gist(log.text, text)}") from None


def open_video(source: str | BinaryIO, num_threads: int = 1):
    """A decord VideoReader over a path or a seekable file object.

    One decoder thread: VP9 needs it under decord, and the pipeline gets its
    parallelism from many decode tasks rather than threads inside one.
    Raises DecodeError (empty, no_video_stream, truncated, corrupt).
    """
    return _open(source, num_threads)[0]


def _unpad(frame: np.ndarray) -> np.ndarray:
    """decord returns rows padded to 4 bytes a pixel for some widths (e.g. 32, 96, 144):
    an (H, W, 4) array that holds W*3 RGB bytes and padding per row. Cut the padding off."""
    if frame.shape[-1] == 3:
        return frame
    height, width = frame.shape[:2]
    return np.ascontiguousarray(frame.reshape(height, -1)[:, : width * 3]).reshape(
        height, width, 3
    )


def _seek_cost(keys: list[int], targets: list[int]) -> int:
    """Frames decoded to reach `targets` (sorted) by seeking to the keyframe before each."""
    cost, pos = 0, 0
    for t in targets:
        key = keys[max(0, bisect.bisect_right(keys, t) - 1)] if keys else 0
        start = key if key > pos else pos
        cost += t - start + 1
        pos = t + 1
    return cost


def _read_sequential(vr, targets: list[int]) -> dict[int, np.ndarray]:
    """Decode every frame from the start, keeping the targets (exact for every codec).

    Frame by frame with `next()`: decord's `skip_frames` counts like its seeking
    and is off in the same streams.
    """
    out: dict[int, np.ndarray] = {}
    pos = 0
    try:
        for t in targets:
            while pos < t:
                vr.next()
                pos += 1
            out[t] = _unpad(vr.next().asnumpy())
            pos += 1
    except StopIteration:
        raise DecodeError(
            TRUNCATED, f"the stream ends at frame {pos} (the header says {len(vr)} frames)"
        ) from None
    return out


def _read_seeking(vr, targets: list[int]) -> dict[int, np.ndarray]:
    try:
        frames = vr.get_batch(targets).asnumpy()
        return dict(zip(targets, frames, strict=True))
    except Exception as e:
        if "size must exactly match" not in str(e):
            raise
    # the padded-row case (see _unpad): get_batch cannot copy those frames, single frames can
    return {t: _unpad(vr[t].asnumpy()) for t in targets}


def _read_frames(vr, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (display order), as (len(indices), H, W, 3) uint8.

    Decoding from the start is exact for every codec; decord's seeking is not
    for open-GOP streams such as x265's default HEVC (it counts keyframes in
    decode order, so it returns frames a few positions late). So the reader
    decodes sequentially whenever that costs at most twice the decoding that
    seeking would do, which covers short clips, and seeks in long videos,
    where a few frames' offset inside a long segment does not change a label.
    """
    targets = sorted(set(indices))
    sequential = targets[-1] + 1 <= 2 * _seek_cost(vr.get_key_indices(), targets)
    frames = _read_sequential(vr, targets) if sequential else _read_seeking(vr, targets)
    return np.stack([frames[i] for i in indices])


def _duration(vr, num_frames: int, fps: float) -> float:
    """End time of the last frame (right for variable frame rate), else frames / fps."""
    try:
        end = float(vr.get_frame_timestamp(num_frames - 1)[1])
        if end > 0:
            return round(end, 6)  # decord keeps timestamps as float32
    except Exception:
        pass  # containers without usable timestamps fall back to the frame rate
    return num_frames / fps if fps > 0 else 0.0


def decode_clip(
    source: str | BinaryIO,
    num_segments: int,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
    num_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, VideoMeta]:
    """Decode the TSN-sampled frames of one video.

    Returns `(frames, indices, meta)`: frames uint8 `(num_segments, H, W, 3)`
    (RGB), the int32 frame indices decoded, and the video's metadata.
    Raises DecodeError for any input that is not a decodable video, including
    one FFmpeg reports as cut short (kind "truncated") even if the sampled
    frames happen to decode: its frame count, and so the sampling, would be wrong.
    """
    # one capture for the reader's whole life: decord's decoder thread can log after
    # a call returns, up to the moment the reader is freed
    with DecoderLog() as log:
        vr, _ = _open(source, num_threads)
        try:
            num_frames = len(vr)
            if num_frames < 1:
                raise DecodeError(ZERO_FRAMES, "the video stream has no frames")
            fps = float(vr.get_avg_fps() or 0.0)
            indices = segment_indices(num_frames, num_segments, train=train, rng=rng)
            try:
                frames = _read_frames(vr, indices.tolist())
                error = None
            except DecodeError:
                raise
            except Exception as e:
                error = e
            duration = _duration(vr, num_frames, fps)
        finally:
            del vr
    if error is not None:
        kind = TRUNCATED if _is_truncation(log.text) else CORRUPT
        raise DecodeError(kind, f"cannot decode frames: {_gist(log.text, str(error))}")
    if _is_truncation(log.text):
        raise DecodeError(TRUNCATED, f"the file ends early: {_gist(log.text)}")
    height, width = frames.shape[1:3]
    meta = VideoMeta(
        num_frames=num_frames,
        fps=fps,
        duration_s=duration,
        width=int(width),
        height=int(height),
    )
    return frames, indices, meta
