"""The CPU stage of the label job: fetch one video, decode its sampled frames, crop them.

Every input gives exactly one result: a uint8 clip `(T, 3, S, S)` ready for
the model, or an error kind and message. Nothing raises out of
`preprocess_batch`, so one bad video never fails the Ray task that holds it:
each video is fetched and decoded in a child process (`pipeline.isolation`),
so a decoder that crashes or hangs (cut off after `timeout_s`) costs one
error row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline import storage
from pipeline.decode import DecodeError, VideoMeta, decode_clip
from pipeline.isolation import ChildCrashed, ChildError, ChildProcess, ChildTimeout
from pipeline.storage import ObjectInfo, SourceChangedError
from pipeline.transforms import resize_crop

# error_kind values this stage adds to those of pipeline.decode
MISSING = "missing"  # the object does not exist (any more)
READ_ERROR = "read_error"  # storage refused or failed (permissions, network, not a file)
SOURCE_CHANGED = "source_changed"  # rewritten between listing and reading
TIMEOUT = "timeout"  # fetch + decode took longer than the per-video limit
DECODER_CRASH = "decoder_crash"  # the decoding process died (e.g. FFmpeg segfaulted)
INTERNAL = "internal"  # a bug or an unexpected failure; the message says what

# FFmpeg's words for a streamed read that failed on the network, not on the video
_NETWORK_FAILURES = ("HTTP error", "Connection refused", "Connection reset", "timed out",
                     "Input/output error", "Server returned")


@dataclass(frozen=True)
class PreprocessConfig:
    """How the CPU stage prepares clips (sizes come from the model's config)."""

    num_segments: int
    resize_size: int
    crop_size: int
    timeout_s: float = 120.0
    stream_threshold_bytes: int = storage.STREAM_THRESHOLD


@dataclass
class ClipResult:
    """One input's outcome: a clip with its sampling and metadata, or an error."""

    uri: str
    version: str
    clip: np.ndarray | None = None  # (T, 3, S, S) uint8
    indices: np.ndarray | None = None  # (T,) int32
    meta: VideoMeta | None = None
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def _error(obj: ObjectInfo, kind: str, message: str) -> ClipResult:
    return ClipResult(obj.uri, obj.version, error_kind=kind, error_message=message)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def _after_streamed_read(obj: ObjectInfo, error: DecodeError | None) -> ClipResult | None:
    """The error row a streamed S3 read ends in, if any, judged by the object itself.

    FFmpeg's GETs carry no If-Match, so the listed version is checked once the
    frames are in (or the decode failed): a deleted or rewritten object is
    reported as such, and an HTTP failure as a read error, not as bad video.
    """
    try:
        now = storage.stat(obj.uri)
    except FileNotFoundError:
        return _error(obj, MISSING, "the object disappeared while it was read")
    except Exception as e:
        return _error(obj, READ_ERROR, f"cannot check the object: {_one_line(e)}")
    if obj.version and now.version != obj.version:
        return _error(obj, SOURCE_CHANGED, "the object was rewritten while it was read")
    if error is not None and any(m in error.message for m in _NETWORK_FAILURES):
        return _error(obj, READ_ERROR, f"streamed read failed: {error.message}")
    return None


def preprocess_one(obj: ObjectInfo, config: PreprocessConfig) -> ClipResult:
    """Fetch, decode and crop one video (no time limit); never raises for bad input."""
    try:
        source = storage.video_source(
            obj.uri,
            size=obj.size if obj.size >= 0 else None,
            version=obj.version or None,
            stream_threshold=config.stream_threshold_bytes,
        )
    except FileNotFoundError:
        return _error(obj, MISSING, "the object does not exist")
    except SourceChangedError:
        return _error(obj, SOURCE_CHANGED, "the object was rewritten after it was listed")
    except Exception as e:  # permissions, network after retries, not a file, bad URI
        return _error(obj, READ_ERROR, f"cannot read: {_one_line(e)}")
    streamed = isinstance(source, str) and storage.is_s3(obj.uri)
    try:
        frames, indices, meta = decode_clip(source, config.num_segments)
    except DecodeError as e:
        if streamed and (verdict := _after_streamed_read(obj, e)) is not None:
            return verdict
        return _error(obj, e.kind, e.message)
    except OSError as e:  # a file object's read failed under the decoder
        return _error(obj, READ_ERROR, f"read failed: {_one_line(e)}")
    finally:
        if not isinstance(source, str):
            source.close()
    if streamed and (verdict := _after_streamed_read(obj, None)) is not None:
        return verdict
    clip = resize_crop(frames, config.resize_size, config.crop_size)
    return ClipResult(obj.uri, obj.version, clip=clip, indices=indices, meta=meta)


# One decoding child per worker process, started at its first video and reused:
# Ray runs many decode tasks in the same worker, so the start-up is paid rarely.
_DECODER = ChildProcess()


def preprocess_bounded(obj: ObjectInfo, config: PreprocessConfig) -> ClipResult:
    """`preprocess_one` in a child process, killed after `config.timeout_s`.

    A segfault in FFmpeg or a decoder that never returns costs this one video
    (error kinds "decoder_crash" and "timeout"), not the Ray task holding it,
    and a killed child leaves no stuck thread or memory behind in the worker.
    """
    try:
        return _DECODER.call(preprocess_one, obj, config, timeout=config.timeout_s)
    except ChildTimeout:
        return _error(obj, TIMEOUT, f"no result within {config.timeout_s:g} s (fetch + decode)")
    except ChildCrashed as e:
        return _error(obj, DECODER_CRASH, str(e))
    except ChildError as e:
        return _error(obj, INTERNAL, str(e))


def results_to_batch(results: list[ClipResult], config: PreprocessConfig) -> dict[str, np.ndarray]:
    """Results as a columnar batch; error rows carry a zero clip and -1/NaN placeholders.

    Placeholders keep every column a plain fixed-shape array for Ray's object
    store; the model stage turns them into nulls using the `ok` column.
    """
    n, t, s = len(results), config.num_segments, config.crop_size
    clips = np.zeros((n, t, 3, s, s), dtype=np.uint8)
    indices = np.full((n, t), -1, dtype=np.int32)
    num_frames = np.full(n, -1, dtype=np.int64)
    width = np.full(n, -1, dtype=np.int32)
    height = np.full(n, -1, dtype=np.int32)
    fps = np.full(n, np.nan)
    duration = np.full(n, np.nan)
    for i, r in enumerate(results):
        if r.ok:
            clips[i] = r.clip
            indices[i] = r.indices
            num_frames[i] = r.meta.num_frames
            width[i], height[i] = r.meta.width, r.meta.height
            fps[i], duration[i] = r.meta.fps, r.meta.duration_s
    return {
        "video_uri": np.array([r.uri for r in results], dtype=object),
        "source_version": np.array([r.version for r in results], dtype=object),
        "ok": np.array([r.ok for r in results], dtype=bool),
        "error_kind": np.array([r.error_kind or "" for r in results], dtype=object),
        "error_message": np.array([r.error_message or "" for r in results], dtype=object),
        "clip": clips,
        "frame_indices": indices,
        "num_frames": num_frames,
        "fps": fps,
        "duration_s": duration,
        "width": width,
        "height": height,
    }


def preprocess_batch(
    batch: dict[str, np.ndarray], config: PreprocessConfig
) -> dict[str, np.ndarray]:
    """Ray Data map_batches function: rows `uri, version, size` -> one clip row each."""
    results = []
    for uri, version, size in zip(batch["uri"], batch["version"], batch["size"], strict=True):
        obj = ObjectInfo(str(uri), int(size), str(version))
        try:
            results.append(preprocess_bounded(obj, config))
        except Exception as e:  # e.g. no child process could be started: still one row
            results.append(_error(obj, INTERNAL, _one_line(e)))
    return results_to_batch(results, config)
