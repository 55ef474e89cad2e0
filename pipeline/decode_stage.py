"""The CPU stage of the label job: fetch one video, decode its sampled frames, crop them.

Every input gives exactly one result: a uint8 clip `(T, 3, S, S)` ready for
the model with what decoding measured, or an error kind and message. Nothing
raises out of `decode_batch`, so one bad video never fails the Ray task that
holds it: each video is fetched and decoded in a child process
(`pipeline.isolation`), so a decoder that crashes or hangs (cut off after
`timeout_s`) costs one error row.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.contract import ErrorKind, video_columns
from pipeline.decoders import DecodeError, decoder_for
from pipeline.errors import one_line
from pipeline.isolation import ChildCrashed, ChildError, ChildProcess, ChildTimeout
from pipeline.sampling import segment_indices
from pipeline.store import ObjectInfo, SourceChangedError, store_for
from pipeline.transforms import resize_crop

MiB = 1024 * 1024
# FFmpeg's words for a streamed read that failed on the network, not on the video
_NETWORK_FAILURES = ("HTTP error", "Connection refused", "Connection reset", "timed out",
                     "Input/output error", "Server returned")


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs: the model's sampling and input size, the job's limits."""

    num_segments: int
    resize_size: int
    input_size: int
    timeout_s: float
    stream_threshold_bytes: int

    @classmethod
    def from_settings(cls, model_config, config) -> DecodeSpec:
        """From the model's config (with the run's num_segments) and the job's `LabelConfig`."""
        return cls(
            num_segments=model_config.num_segments,
            resize_size=model_config.resize_size,
            input_size=model_config.input_size,
            timeout_s=config.decode_timeout_s,
            stream_threshold_bytes=int(config.stream_threshold_mb * MiB),
        )


@dataclass
class ClipResult:
    """One input's outcome: a clip and what decoding measured, or an error."""

    obj: ObjectInfo
    clip: np.ndarray | None = None  # (T, 3, S, S) uint8
    video: dict[str, object] | None = None  # values of the contract's VIDEO columns
    error_kind: ErrorKind | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def _error(obj: ObjectInfo, kind: ErrorKind, message: str) -> ClipResult:
    return ClipResult(obj, error_kind=kind, error_message=message)


def _after_remote_stream(obj: ObjectInfo, error: DecodeError | None) -> ClipResult | None:
    """The error row a decoder's own network read ends in, if any, judged by the object.

    FFmpeg's GETs carry no If-Match, so the listed version is checked once the
    frames are in (or the decode failed): a deleted or rewritten object is
    reported as such, and an HTTP failure as a read error, not as bad video.
    """
    try:
        now = store_for(obj.uri).stat(obj.uri)
    except FileNotFoundError:
        return _error(obj, ErrorKind.MISSING, "the object disappeared while it was read")
    except Exception as e:
        return _error(obj, ErrorKind.READ_ERROR, f"cannot check the object: {one_line(e)}")
    if obj.version and now.version != obj.version:
        return _error(obj, ErrorKind.SOURCE_CHANGED, "the object was rewritten while it was read")
    if error is not None and any(m in error.message for m in _NETWORK_FAILURES):
        return _error(obj, ErrorKind.READ_ERROR, f"streamed read failed: {error.message}")
    return None


def decode_one(obj: ObjectInfo, spec: DecodeSpec) -> ClipResult:
    """Fetch, decode and crop one video (no time limit); never raises for bad input."""
    try:
        video = store_for(obj.uri).video_input(obj, spec.stream_threshold_bytes)
    except FileNotFoundError:
        return _error(obj, ErrorKind.MISSING, "the object does not exist")
    except SourceChangedError:
        return _error(obj, ErrorKind.SOURCE_CHANGED, "the object was rewritten after it was listed")
    except Exception as e:  # permissions, network after retries, not a file, bad URI
        return _error(obj, ErrorKind.READ_ERROR, f"cannot read: {one_line(e, with_type=True)}")
    sampler = functools.partial(segment_indices, num_segments=spec.num_segments)
    try:
        clip = decoder_for("cpu").decode(video.source, sampler)
    except DecodeError as e:
        if video.remote_stream and (verdict := _after_remote_stream(obj, e)) is not None:
            return verdict
        return _error(obj, e.kind, e.message)
    except OSError as e:  # a file object's read failed under the decoder
        return _error(obj, ErrorKind.READ_ERROR, f"read failed: {one_line(e, with_type=True)}")
    finally:
        video.close()
    if video.remote_stream and (verdict := _after_remote_stream(obj, None)) is not None:
        return verdict
    measured = {**dataclasses.asdict(clip.meta), "frame_indices": clip.indices.tolist()}
    return ClipResult(obj, clip=resize_crop(clip.frames, spec.resize_size, spec.input_size),
                      video=measured)


# One decoding child per worker process, started at its first video and reused:
# Ray runs many decode tasks in the same worker, so the start-up is paid rarely.
_DECODER = ChildProcess(warm=("pipeline.decode_stage",))


def decode_bounded(obj: ObjectInfo, spec: DecodeSpec) -> ClipResult:
    """`decode_one` in a child process, killed after `spec.timeout_s`.

    A segfault in FFmpeg or a decoder that never returns costs this one video
    (error kinds "decoder_crash" and "timeout"), not the Ray task holding it,
    and a killed child leaves no stuck thread or memory behind in the worker.
    """
    try:
        return _DECODER.call(decode_one, obj, spec, timeout=spec.timeout_s)
    except ChildTimeout:
        return _error(obj, ErrorKind.TIMEOUT,
                      f"no result within {spec.timeout_s:g} s (fetch + decode)")
    except ChildCrashed as e:
        return _error(obj, ErrorKind.DECODER_CRASH, str(e))
    except ChildError as e:
        return _error(obj, ErrorKind.INTERNAL, str(e))


def results_table(results: list[ClipResult], spec: DecodeSpec) -> pa.Table:
    """Results as one Arrow batch: keys, verdicts, the VIDEO columns and the clips.

    Error rows carry a zero clip (a fixed-shape tensor column cannot hold a
    null) and null measurements.
    """
    from ray.data.extensions import ArrowTensorArray

    t, s = spec.num_segments, spec.input_size
    clips = np.zeros((len(results), t, 3, s, s), dtype=np.uint8)
    for i, r in enumerate(results):
        if r.ok:
            clips[i] = r.clip
    return pa.table({
        "video_uri": pa.array([r.obj.uri for r in results], pa.string()),
        "source_version": pa.array([r.obj.version for r in results], pa.string()),
        "error_kind": pa.array([r.error_kind for r in results], pa.string()),
        "error_message": pa.array([r.error_message for r in results], pa.string()),
        **video_columns([r.video for r in results]),
        "clip": ArrowTensorArray.from_numpy(clips),
    })


def decode_batch(batch: pa.Table, spec: DecodeSpec) -> pa.Table:
    """Ray Data map_batches function: listed inputs (`pipeline.listing.INPUT_SCHEMA`) -> one
    result row each. An input the listing already found broken becomes its error row here,
    without a decoder (at listing speed)."""
    results = []
    for row in batch.to_pylist():
        obj = ObjectInfo(row["uri"], row["size"], row["version"])
        if row["error_kind"] is not None:
            results.append(_error(obj, ErrorKind(row["error_kind"]), row["error_message"]))
            continue
        try:
            results.append(decode_bounded(obj, spec))
        except Exception as e:  # e.g. no child process could be started: still one row
            results.append(_error(obj, ErrorKind.INTERNAL, one_line(e, with_type=True)))
    return results_table(results, spec)
