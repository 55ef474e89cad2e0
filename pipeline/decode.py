"""CPU decoding with decord: open a video, sample its segments, decode only those frames.

Failures become `DecodeError(kind, message)` with a machine-readable kind, so
callers can turn any bad input into an error row instead of stopping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from pipeline.sampling import segment_indices


class DecodeError(Exception):
    """A video that cannot be decoded; `kind` is machine-readable (see ERROR_KINDS)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


# error_kind values this module produces
EMPTY = "empty"  # zero bytes
NO_VIDEO_STREAM = "no_video_stream"  # a container without video (audio-only, ...)
ZERO_FRAMES = "zero_frames"  # a video stream with no decodable frame
CORRUPT = "corrupt"  # not a video, or damaged beyond decoding


@dataclass(frozen=True)
class VideoMeta:
    """What the container says about the video stream."""

    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int


def _gist(text: str, limit: int = 300) -> str:
    """The first meaningful line of a decoder message, without FFmpeg's log noise."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    msg = lines[-1] if lines else "unknown decoder error"
    return msg[:limit]


def open_video(source: str | BinaryIO, num_threads: int = 1):
    """A decord VideoReader over a path or a seekable file object.

    One decoder thread: VP9 needs it under decord, and the pipeline gets its
    parallelism from many decode tasks rather than threads inside one.
    """
    import decord

    try:
        return decord.VideoReader(source, ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as e:  # decord raises RuntimeError/DECORDError with FFmpeg's text
        text = str(e)
        if "Error reading 0 bytes" in text:
            raise DecodeError(EMPTY, "the file is empty") from None
        if "cannot find video stream" in text:
            raise DecodeError(NO_VIDEO_STREAM, "no video stream in the file") from None
        raise DecodeError(CORRUPT, f"cannot open as video: {_gist(text)}") from None


def decode_clip(
    source: str | BinaryIO,
    num_segments: int,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, VideoMeta]:
    """Decode the TSN-sampled frames of one video.

    Returns `(frames, indices, meta)`: frames uint8 `(num_segments, H, W, 3)`
    (RGB), the int32 frame indices decoded, and the video's metadata.
    """
    vr = open_video(source)
    num_frames = len(vr)
    if num_frames < 1:
        raise DecodeError(ZERO_FRAMES, "the video stream has no frames")
    fps = float(vr.get_avg_fps() or 0.0)
    indices = segment_indices(num_frames, num_segments, train=train, rng=rng)
    try:
        frames = vr.get_batch(indices.tolist()).asnumpy()
    except Exception as e:
        raise DecodeError(CORRUPT, f"cannot decode frames: {_gist(str(e))}") from None
    height, width = frames.shape[1:3]
    meta = VideoMeta(
        num_frames=num_frames,
        fps=fps,
        duration_s=num_frames / fps if fps > 0 else 0.0,
        width=int(width),
        height=int(height),
    )
    return frames, indices, meta
