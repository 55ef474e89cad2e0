"""Fetch one video and decode its sampled frames: what runs in the decoding child process.

Every outcome is a value, never an exception: frames and what decoding
measured, or an error kind that says whose fault it was. A failure to read
is the store's (`missing`, `source_changed`, `read_error`: a rerun tries
again), never taken for a bad video; a video the decoder rejects gets the
decoder's kind (`corrupt`, `truncated`, `too_large`, ...).

This module imports no torch: the child stays small (about 200 MB instead of
900), so it can run under a memory cap (`pipeline.isolation`) and a hostile
file costs one row, not a node. Resizing happens in the decode task.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.contract import ErrorKind
from pipeline.decoders import DecodeError, decoder_for
from pipeline.errors import one_line
from pipeline.sampling import sampler
from pipeline.store import NotAFileError, ObjectInfo, SourceChangedError, store_for


@dataclass(frozen=True)
class FetchDecode:
    """What the child needs to fetch and decode one video."""

    num_segments: int
    sampling: str
    max_frame_pixels: int
    whole_below: int  # S3 objects up to this size are read with one GET


@dataclass
class Decoded:
    """One video's outcome: the sampled frames (uint8 `(T, H, W, 3)`) and the values of the
    contract's VIDEO columns, or an error kind and message."""

    frames: np.ndarray | None = None
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
    try:
        clip = decoder_for("cpu").decode(source, sampler(job.sampling, job.num_segments),
                                         max_pixels=job.max_frame_pixels)
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


def _accounting(source, started: float) -> dict[str, object]:
    """What a read cost, for the VIDEO columns (errors keep theirs too)."""
    return {"decoder": "cpu", "bytes_read": getattr(source, "bytes_read", None),
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
