"""TSN segment sampling: the one frame sampler used by label, evaluate and train.

A video of `num_frames` frames is split into `num_segments` equal segments and
one frame is taken from each: the centre of the segment at test time (as the
reference TSN/TSM test code does), a uniformly random frame inside it when
training. Videos shorter than `num_segments` frames repeat frames rather than
fail, so every video yields a clip of the same length.
"""

from __future__ import annotations

import numpy as np


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices (int32, non-decreasing, length `num_segments`) to decode.

    Args:
        num_frames: frames in the video (must be >= 1).
        num_segments: segments, one frame each (must be >= 1).
        train: take a random frame in each segment instead of its centre.
        rng: random generator for training; a fresh default one if omitted.
    """
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    tick = num_frames / num_segments
    starts = tick * np.arange(num_segments, dtype=np.float64)
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.uniform(0.0, tick, size=num_segments)
    else:
        offsets = np.full(num_segments, tick / 2.0)
    idx = np.floor(starts + offsets).astype(np.int64)
    return np.clip(idx, 0, num_frames - 1).astype(np.int32)
