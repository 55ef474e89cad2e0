"""Fetch one video and decode its sampled frames: what runs in the decoding child process.

Every outcome is a value, never an exception: frames and what decoding
measured, or an error kind that says whose fault it was. A failure to read
is the store's (`missing`, `source_changed`, `read_error`: a rerun tries
again), never taken for a bad video; a video the decoder rejects gets the
decoder's kind (`corrupt`, `truncated`, `too_large`, ...).

With a GPU decoder in the job (`gpu_backend`), a video DALI can take
(`pipeline.decoders.routing`) is not decoded here: its whole file goes on to
the model actor, encoded, with the frame indices the sampler chose, and the
actor decodes it on its GPU. Everything else is decoded here as usual.

This module imports no torch: the child stays small (about 200 MB instead of
900), so it can run under a memory cap (`pipeline.isolation`) and a hostile
file costs one row, not a node. Resizing happens in the decode task.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.contract import DecodedBy, ErrorKind
from pipeline.decoders import DecodeError, VideoIndex, decoder_for
from pipeline.decoders.routing import MAX_GPU_DECODE_FRAMES, VideoProbe, route
from pipeline.errors import one_line
from pipeline.sampling import sampler
from pipeline.store import NotAFileError, ObjectInfo, SourceChangedError, store_for

# a video goes to the GPU whole; above this it is decoded here (it sits in the decode task,
# the object store and the actor's memory on its way)
MAX_SHIPPED_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class FetchDecode:
    """What the child needs to fetch and decode one video."""

    num_segments: int
    sampling: str
    max_frame_pixels: int
    whole_below: int  # S3 objects up to this size are read with one GET
    # "nvdec" or "dali-cpu": which DALI backend the model actors decode with (None: no DALI,
    # every video is decoded here)
    gpu_backend: str | None = None
    max_gpu_decode_frames: int = MAX_GPU_DECODE_FRAMES


@dataclass
class Decoded:
    """One video's outcome: the sampled frames (uint8 `(T, H, W, 3)`) and the values of the
    contract's VIDEO columns, or an error kind and message."""

    frames: np.ndarray | None = None
    encoded: bytes | None = None  # the whole file, for the actor's GPU decoder (no frames)
    video: dict[str, object] = field(default_factory=dict)
    error_kind: ErrorKind | None = None
    error_message: str | None = None


def _failed(kind: ErrorKind, message: str, video: dict | None = None) -> Decoded:
    return Decoded(error_kind=kind, error_message=message, video=video or {})


def fetch_decode(obj: ObjectInfo, job: FetchDecode) -> Decoded:
    """Fetch and decode one video (no time limit); never raises for a bad video or store."""
    started = time.process_time()
    try:
        source = store_for(obj.uri).open_video(obj, job.whole_below)
    except (OSError, ValueError) as e:  # missing, rewritten, refused, not a file, a bad URI
        return _failed(*_read_failure(e, "cannot read"))
    pick = sampler(job.sampling, job.num_segments)
    try:
        if job.gpu_backend is not None:
            shipped = _for_gpu(source, pick, job, started)
            if shipped is not None:
                return shipped
            source.seek(0)
        clip = decoder_for("cpu").decode(source, pick, max_pixels=job.max_frame_pixels)
    except DecodeError as e:
        return _failed(e.kind, e.message, _accounting(source, started))
    except MemoryError:
        return _failed(ErrorKind.RESOURCE_LIMIT, "decoding ran out of its memory cap",
                       _accounting(source, started))
    except OSError as e:  # the store failed under the decoder, mid-read
        return _failed(*_read_failure(e, "read failed"), _accounting(source, started))
    finally:
        source.close()
    video = {**asdict(clip.meta), "frame_indices": clip.indices.tolist(),
             "frames_decoded": clip.frames_decoded, **_accounting(source, started)}
    return Decoded(frames=clip.frames, video=video)


def _for_gpu(source, pick, job: FetchDecode, started: float) -> Decoded | None:
    """The video encoded, with its frame indices and VIDEO columns, if DALI should decode it;
    None if it is to be decoded here (raises DecodeError as decoding would)."""
    from pipeline.decoders.pyav import count_packets, probe

    p = probe(source, max_pixels=job.max_frame_pixels)
    if p.num_frames < 1:
        return None  # decoding says what is wrong
    indices = np.asarray(pick(VideoIndex(p.num_frames, p.keyframes)), dtype=np.int32)
    video_probe = VideoProbe(p.codec, p.profile, p.pix_fmt, p.bit_depth, p.width, p.height,
                             p.num_frames)
    last = int(indices.max())

    def target(packets: int | None = None) -> str:
        where = route(dataclasses.replace(video_probe, packets=packets),
                      backend=job.gpu_backend, last_index=last,
                      max_decode_frames=job.max_gpu_decode_frames)
        return where.target

    if target() != "gpu" or source.seek(0, io.SEEK_END) > MAX_SHIPPED_BYTES:
        return None
    source.seek(0)
    data = source.read()
    # a file cut short whose index still promises every frame: DALI would hand back stale
    # frames for the missing ones without a word, the CPU decoder reports it (routing.py)
    if target(count_packets(io.BytesIO(data))) != "gpu":
        return None
    video = {"num_frames": p.num_frames, "fps": p.fps, "duration_s": p.duration_s,
             "width": p.width, "height": p.height, "frame_indices": indices.tolist(),
             # DALI decodes every frame from the start up to the last one asked for
             "frames_decoded": last + 1, **_accounting(source, started),
             "decoder": DecodedBy.DALI.value}
    return Decoded(encoded=data, video=video)


def _accounting(source, started: float) -> dict[str, object]:
    """What a read cost, for the VIDEO columns (errors keep theirs too)."""
    return {"decoder": DecodedBy.CPU.value, "bytes_read": getattr(source, "bytes_read", None),
            "read_retries": getattr(source, "retries", None),
            "decode_cpu_s": round(time.process_time() - started, 4)}


def _read_failure(e: Exception, what: str) -> tuple[ErrorKind, str]:
    if isinstance(e, FileNotFoundError):
        return ErrorKind.MISSING, "the object does not exist (any more)"
    if isinstance(e, SourceChangedError):
        return ErrorKind.SOURCE_CHANGED, "the object was rewritten after it was listed"
    if isinstance(e, NotAFileError):
        return ErrorKind.NOT_A_FILE, "not a regular file (a directory, FIFO or device)"
    return ErrorKind.READ_ERROR, f"{what}: {one_line(e, with_type=True)}"
