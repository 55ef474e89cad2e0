"""CPU decoding with decord: open a video, sample it, decode only the sampled frames.

Failures become `DecodeError(kind, message)`; FFmpeg's own explanation is
captured and summarised by `pipeline.decoders.ffmpeg_messages`.
"""

from __future__ import annotations

import bisect
import os
from typing import BinaryIO

import numpy as np

# torch before decord, always: with decord2 3.4 loaded first, a later torch matrix
# product segfaults the process (their bundled BLAS/OpenMP libraries clash)
import torch  # noqa: F401

from pipeline.contract import ErrorKind
from pipeline.decoders import DecodedClip, DecodeError, Decoder, Sampler, VideoMeta
from pipeline.decoders.ffmpeg_messages import DecoderLog, gist, is_truncation


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
    """A decord VideoReader over a path or a file object; DecodeError if it cannot open."""
    import decord

    if _source_size(source) == 0:
        raise DecodeError(ErrorKind.EMPTY, "the file is empty")
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
        return vr
    text = str(error)
    if "cannot find video stream" in text:
        raise DecodeError(ErrorKind.NO_VIDEO_STREAM,
                          "no video stream in the file (audio only?)") from None
    kind = ErrorKind.TRUNCATED if is_truncation(log.text) else ErrorKind.CORRUPT
    raise DecodeError(kind, f"cannot open as video: {gist(log.text, text)}") from None


def _unpad(frame: np.ndarray) -> np.ndarray:
    """decord returns rows padded to 4 bytes a pixel for some widths (e.g. 32, 96, 144):
    an (H, W, 4) array that holds W*3 RGB bytes and padding per row. Cut the padding off."""
    if frame.shape[-1] == 3:
        return frame
    height, width = frame.shape[:2]
    return np.ascontiguousarray(frame.reshape(height, -1)[:, : width * 3]).reshape(
        height, width, 3
    )


def seek_cost(keys: list[int], targets: list[int]) -> int:
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
            ErrorKind.TRUNCATED,
            f"the stream ends at frame {pos} (the header says {len(vr)} frames)",
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
    sequential = targets[-1] + 1 <= 2 * seek_cost(vr.get_key_indices(), targets)
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


class DecordDecoder(Decoder):
    """CPU decoding with decord (FFmpeg underneath).

    One decoder thread per video: VP9 needs it under decord, and the pipeline
    gets its parallelism from many decode tasks rather than threads inside one.
    """

    name = "cpu"

    def __init__(self, num_threads: int = 1):
        self.num_threads = num_threads

    def decode(self, source: str | BinaryIO, sampler: Sampler) -> DecodedClip:
        """The sampled frames of one video (see `Decoder.decode`).

        A file FFmpeg reports as cut short (kind "truncated") is an error even
        if the sampled frames happen to decode: its frame count, and so the
        sampling, would be wrong.
        """
        # one capture for the reader's whole life: decord's decoder thread can log after
        # a call returns, up to the moment the reader is freed
        with DecoderLog() as log:
            vr = _open(source, self.num_threads)
            try:
                num_frames = len(vr)
                if num_frames < 1:
                    raise DecodeError(ErrorKind.ZERO_FRAMES, "the video stream has no frames")
                fps = float(vr.get_avg_fps() or 0.0)
                indices = np.asarray(sampler(num_frames), dtype=np.int32)
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
            kind = ErrorKind.TRUNCATED if is_truncation(log.text) else ErrorKind.CORRUPT
            raise DecodeError(kind, f"cannot decode frames: {gist(log.text, str(error))}")
        if is_truncation(log.text):
            raise DecodeError(ErrorKind.TRUNCATED, f"the file ends early: {gist(log.text)}")
        height, width = frames.shape[1:3]
        meta = VideoMeta(num_frames=num_frames, fps=fps, duration_s=duration,
                         width=int(width), height=int(height))
        return DecodedClip(frames, indices, meta)
