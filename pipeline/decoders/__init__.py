"""Decoders: turn a video (path, in-memory file or URL) into its sampled frames.

    decoder = decoder_for("cpu")
    clip = decoder.decode(source, sampler)   # DecodedClip: frames, indices, meta

A decoder opens the video, asks `sampler` which frames to take given the
frame count, and returns those frames as uint8 RGB with the video's metadata.
Any input that is not a decodable video raises `DecodeError` with a
machine-readable `ErrorKind`; storage failures while reading stay `OSError`s,
so callers can tell a broken video from a broken network.

Implementations: `cpu` (PyAV, `pipeline.decoders.pyav`): exact frames, reading the
container's index and only the bytes of the frames it decodes, through any seekable
file object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

import numpy as np

from pipeline.contract import ErrorKind


@dataclass(frozen=True)
class VideoIndex:
    """What a sampler may use: the frame count, and the keyframes when the container's index
    gives them without reading the video (None when it does not)."""

    num_frames: int
    keyframes: tuple[int, ...] | None = None


# a video's index -> the frame indices to decode (int32, in clip order)
Sampler = Callable[[VideoIndex], np.ndarray]


class DecodeError(Exception):
    """A video that cannot be decoded; `kind` says why in a machine-readable way."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class VideoMeta:
    """What the container says about the video stream (field names are output columns)."""

    num_frames: int
    fps: float
    duration_s: float
    width: int
    height: int


@dataclass(frozen=True)
class DecodedClip:
    """The sampled frames of one video: `frames` uint8 `(T, H, W, 3)` RGB, `indices` int32,
    and the cost: frames the decoder decoded to get them (the accounting of issue 10)."""

    frames: np.ndarray
    indices: np.ndarray
    meta: VideoMeta
    frames_decoded: int


class Decoder(ABC):
    """Decodes the frames a sampler picks; one instance serves many videos."""

    name: ClassVar[str]

    @abstractmethod
    def decode(self, source: str | BinaryIO, sampler: Sampler, *,
               max_pixels: int | None = None) -> DecodedClip:
        """The sampled frames of the video at `source`; raises DecodeError for bad video
        (kind `too_large`, before decoding anything, for frames over `max_pixels`)."""


def decoder_for(name: str) -> Decoder:
    """The decoder called `name`."""
    if name == "cpu":
        from pipeline.decoders.pyav import PyAVDecoder

        return PyAVDecoder()
    raise ValueError(f"unknown decoder {name!r} (known: cpu)")
