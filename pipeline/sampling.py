"""TSN segment sampling: the one frame sampler used by label, evaluate and train.

A video of `num_frames` frames is split into `num_segments` equal segments and
one frame is taken from each:

- `uniform`: the centre of each segment at test time (as the reference TSN/TSM
  test code does), a uniformly random frame inside it when training. Exact for
  every codec.
- `keyframe`: in each segment, the frame that is cheapest to decode: a
  keyframe inside the segment whenever there is one (the one closest to the
  centre when there are several: one packet read, one frame decoded), else the
  segment's first frame (the least decoding from the keyframe before it, or
  from the frame taken in the previous segment). A model trained with random
  frames per segment does not need the exact centre (docs/performance.md
  measures what it costs in accuracy).

Videos shorter than `num_segments` frames repeat frames rather than fail, so
every video yields a clip of the same length.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np

from pipeline.decoders import Sampler

SAMPLINGS = ("uniform", "keyframe")


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


def keyframe_indices(num_frames: int, num_segments: int,
                     keyframes: Sequence[int] | None) -> np.ndarray:
    """The `keyframe` sampling (see the module doc); centres when keyframes are unknown."""
    centres = segment_indices(num_frames, num_segments)
    if not keyframes or num_frames < num_segments:
        return centres
    keys = sorted(set(keyframes))
    tick = num_frames / num_segments
    out = []
    for i, centre in enumerate(centres.tolist()):
        lo, hi = math.ceil(tick * i), min(num_frames, math.ceil(tick * (i + 1)))
        inside = keys[bisect.bisect_left(keys, lo):bisect.bisect_left(keys, hi)]
        out.append(min(inside, key=lambda k: (abs(k - centre), k)) if inside else lo)
    return np.asarray(out, dtype=np.int32)


def sampler(mode: str, num_segments: int, *, train: bool = False,
            rng: np.random.Generator | None = None) -> Sampler:
    """The `Sampler` a decoder calls with the video's index (see `SAMPLINGS`)."""
    if mode == "uniform":
        return lambda index: segment_indices(index.num_frames, num_segments, train=train, rng=rng)
    if mode == "keyframe":
        return lambda index: keyframe_indices(index.num_frames, num_segments, index.keyframes)
    raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {mode!r}")


