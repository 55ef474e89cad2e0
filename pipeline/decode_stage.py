"""The CPU stage of the label job: each video fetched and decoded apart, then cropped.

Every input gives exactly one result: a uint8 clip `(T, 3, S, S)` ready for
the model with what decoding measured, or an error kind and message; or, when
the model actors decode with DALI, the encoded file and its frame indices for
the videos their GPU decoder takes (`pipeline.fetch_decode`). Nothing
raises out of `decode_batch`, so one bad video never fails the Ray task that
holds it: each video is fetched and decoded in a child process
(`pipeline.isolation`, `pipeline.fetch_decode`) under a memory cap, so a
decoder that crashes, hangs (cut off after `timeout_s`) or balloons costs
one error row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.contract import ErrorKind, video_columns
from pipeline.errors import one_line
from pipeline.fetch_decode import MAX_SHIPPED_BYTES, Decoded, FetchDecode, fetch_decode
from pipeline.isolation import ChildCrashed, ChildError, ChildProcess, ChildTimeout
from pipeline.store import ObjectInfo
from pipeline.transforms import resize_crop

MiB = 1024 * 1024
CHILD_BASE = 512 * MiB  # a decoding child with its imports (PyAV, pyarrow, boto3): ~200 MB
# a decoder's frames: its reference frames, threads' copies and the RGB of the sample, in
# bytes per pixel of one frame (a 720p H.264 decode peaks well under this)
BYTES_PER_PIXEL = 48
# the columns a decode task adds for the model stage (not output columns)
CLIP = "clip"  # the (T, 3, S, S) uint8 clip, as bytes
ENCODED = "encoded"  # the whole file, for the actor's GPU decoder


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs: the model's sampling and input size, the job's limits."""

    job: FetchDecode  # what the child does
    resize_size: int
    input_size: int
    timeout_s: float
    kept: tuple[str, ...] = ()  # manifest columns passed through to the rows

    @classmethod
    def from_settings(cls, model_config, config, gpu_backend: str | None = None) -> DecodeSpec:
        """From the model's config (with the run's num_segments), the job's `LabelConfig`
        and the DALI backend of the model actors, if they decode (`LabelPlan.gpu_backend`)."""
        job = FetchDecode(num_segments=model_config.num_segments, sampling=config.sampling,
                          max_frame_pixels=config.max_frame_pixels,
                          whole_below=int(config.whole_read_mb * MiB), gpu_backend=gpu_backend)
        return cls(job, model_config.resize_size, model_config.input_size,
                   config.decode_timeout_s, config.keep_columns)

    @property
    def memory_bytes(self) -> int:
        """What one video's decoding may use at most: the child's cap, and Ray's budget for a
        decode task (an object read whole sits in memory too)."""
        shipped = MAX_SHIPPED_BYTES if self.job.gpu_backend else 0  # a file for the GPU, whole
        return (CHILD_BASE + BYTES_PER_PIXEL * self.job.max_frame_pixels + self.job.whole_below
                + shipped)


@dataclass
class ClipResult:
    """One input's outcome: a clip and what decoding measured, or an error."""

    obj: ObjectInfo
    clip: np.ndarray | None = None  # (T, 3, S, S) uint8
    encoded: bytes | None = None  # the whole file, for the model actor's GPU decoder
    video: dict[str, object] | None = None  # values of the contract's VIDEO columns
    error_kind: ErrorKind | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None


def _error(obj: ObjectInfo, kind: ErrorKind, message: str) -> ClipResult:
    return ClipResult(obj, error_kind=kind, error_message=message)


# One decoding child per worker process, started at its first video and reused:
# Ray runs many decode tasks in the same worker, so the start-up is paid rarely.
_CHILDREN: dict[int, ChildProcess] = {}


def _child(spec: DecodeSpec) -> ChildProcess:
    cap = spec.memory_bytes
    if cap not in _CHILDREN:
        _CHILDREN[cap] = ChildProcess(warm=("pipeline.fetch_decode",), memory_limit=cap)
    return _CHILDREN[cap]


def decode_bounded(obj: ObjectInfo, spec: DecodeSpec) -> ClipResult:
    """Fetch and decode `obj` in the child, then resize and crop its frames.

    A segfault in FFmpeg, a decoder that never returns or one past its memory
    cap costs this one video ("decoder_crash", "timeout", "resource_limit"),
    not the Ray task holding it.
    """
    try:
        decoded: Decoded = _child(spec).call(fetch_decode, obj, spec.job, timeout=spec.timeout_s)
    except ChildTimeout:
        return _error(obj, ErrorKind.TIMEOUT,
                      f"no result within {spec.timeout_s:g} s (fetch + decode)")
    except ChildCrashed as e:
        return _error(obj, ErrorKind.DECODER_CRASH, str(e))
    except ChildError as e:
        if e.exception_type == "MemoryError":
            return _error(obj, ErrorKind.RESOURCE_LIMIT, "decoding ran out of its memory cap")
        return _error(obj, ErrorKind.INTERNAL, str(e))
    if decoded.error_kind is not None:
        return ClipResult(obj, video=decoded.video or None, error_kind=decoded.error_kind,
                          error_message=decoded.error_message)
    if decoded.encoded is not None:
        return ClipResult(obj, encoded=decoded.encoded, video=decoded.video)
    clip = resize_crop(decoded.frames, spec.resize_size, spec.input_size)
    return ClipResult(obj, clip=clip, video=decoded.video)


def results_table(results: list[ClipResult], kept: dict[str, pa.Array] | None = None
                  ) -> pa.Table:
    """Results as one Arrow batch: keys, verdicts, the VIDEO columns, then the clip or the
    encoded file (each null where the row has none). Error rows keep what reading cost."""
    return pa.table({
        "video_uri": pa.array([r.obj.uri for r in results], pa.string()),
        "source_version": pa.array([r.obj.version for r in results], pa.string()),
        "error_kind": pa.array([r.error_kind for r in results], pa.string()),
        "error_message": pa.array([r.error_message for r in results], pa.string()),
        **video_columns([r.video for r in results]),
        **(kept or {}),
        CLIP: pa.array([r.clip.tobytes() if r.clip is not None else None for r in results],
                       pa.large_binary()),
        ENCODED: pa.array([r.encoded for r in results], pa.large_binary()),
    })


def read_clips(column: pa.Array | pa.ChunkedArray, shape: tuple[int, ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """The clips of a `clip` column: (positions of the rows that have one, uint8 clips
    `(n, *shape)`), a view of the column's memory when its clips lie back to back."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = np.flatnonzero(arr.is_valid().to_numpy(zero_copy_only=False))
    size = int(np.prod(shape))
    if len(rows) == 0:
        return rows, np.zeros((0, *shape), dtype=np.uint8)
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset:arr.offset + len(arr) + 1]
    values = np.frombuffer(arr.buffers()[2], np.uint8)
    lengths = np.diff(offsets)
    if not (lengths[rows] == size).all():
        raise ValueError(f"clips of {sorted(set(lengths[rows].tolist()))} bytes, "
                         f"expected {size} for {shape}")
    if lengths.sum() == size * len(rows):  # rows without a clip take no bytes: back to back
        return rows, values[offsets[0]:offsets[-1]].reshape(len(rows), *shape)
    return rows, np.stack([values[o:o + size].reshape(shape) for o in offsets[rows]])


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
    return results_table(results, {name: batch[name] for name in spec.kept})
