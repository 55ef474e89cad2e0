"""TSN segment sampling: centre frames at test time, one random frame per segment in training."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sampling import segment_indices


def test_centre_of_each_segment():
    # 80 frames, 8 segments of 10: centres at 5, 15, ..., 75
    assert segment_indices(80, 8).tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    # uneven: 10 frames in 4 segments of 2.5 -> floor(1.25 + 2.5 k)
    assert segment_indices(10, 4).tolist() == [1, 3, 6, 8]


def test_indices_are_int32_in_range_and_non_decreasing():
    for frames in (1, 2, 7, 8, 9, 100, 12345):
        idx = segment_indices(frames, 8)
        assert idx.dtype == np.int32 and idx.shape == (8,)
        assert idx.min() >= 0 and idx.max() <= frames - 1
        assert (np.diff(idx) >= 0).all()


def test_short_videos_repeat_frames():
    assert segment_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert segment_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]


def test_training_draws_one_frame_inside_each_segment():
    rng = np.random.default_rng(0)
    draws = np.stack([segment_indices(80, 8, train=True, rng=rng) for _ in range(400)])
    for k in range(8):
        seg = draws[:, k]
        assert seg.min() >= 10 * k and seg.max() <= 10 * k + 9
        assert len(set(seg.tolist())) == 10  # every frame of the segment gets drawn
    # reproducible with a seeded generator
    a = segment_indices(80, 8, train=True, rng=np.random.default_rng(3))
    b = segment_indices(80, 8, train=True, rng=np.random.default_rng(3))
    assert a.tolist() == b.tolist()


@pytest.mark.parametrize("frames, segments", [(0, 8), (-1, 8), (10, 0)])
def test_bad_arguments_raise(frames, segments):
    with pytest.raises(ValueError):
        segment_indices(frames, segments)
