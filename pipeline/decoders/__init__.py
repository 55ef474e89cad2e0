"""Decoders: turn a video (path, in-memory file or URL) into its sampled frames.

    decoder = decoder_for("cpu")
    clip = decoder.decode(source, sampler)   # DecodedClip: frames, indices, meta

A decoder opens the video, asks `sampler` which frames to take given the
frame count, and returns those frames as uint8 RGB with the video's metadata.
Any input that is not a decodable video raises `DecodeError` with a
machine-readable `ErrorKind`; storage failures while reading stay `OSError`s,
so callers can tell a broken video from a broken network.

Implementations: `cpu` (decord, `pipeline.decoders.decord_cpu`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

import numpy as np

from pipeline.contract import ErrorKind

# num_frames -> the frame indices to decode (int32, in clip order)
Sampler = Callable[[int], np.ndarray]


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
    """The sampled frames of one video: `frames` uint8 `(T, H, W, 3)` RGB, `indices` int32."""

    frames: np.ndarray
    indices: np.ndarray
    meta: VideoMeta


class Decoder(ABC):
    """Decodes the frames a sampler picks; one instance serves many videos."""

    name: ClassVar[str]

    @abstractmethod
    def decode(self, source: str | BinaryIO, sampler: Sampler) -> DecodedClip:
        """The sampled frames of the video at `source`; raises DecodeError for bad video."""


def decoder_for(name: str) -> Decoder:
    """The decoder called `name`."""
    if name == "cpu":
        from pipeline.decoders.decord_cpu import DecordDecoder

        return DecordDecoder()
    raise ValueError(f"unknown decoder {name!r} (known: cpu)")
