"""Temporal shift and temporal pool semantics on hand-built tensors."""

from __future__ import annotations

import pytest
import torch
from reference_tsm import reference_shift
from torch import nn

from tsm_model import TemporalPool, TemporalShift, temporal_shift

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# One clip, T=3 frames, C=4 channels, 1x1 pixels; value = 10*t + c + 1 (no zeros, so a
# zero in the output can only come from padding). shift_div=4 -> fold=1.
CLIP = [[1, 2, 3, 4], [11, 12, 13, 14], [21, 22, 23, 24]]

EXPECTED = {
    # channel 0 takes frame t+1, channel 1 takes frame t-1, channels 2-3 stay.
    ("bidirectional", "zero"): [[11, 0, 3, 4], [21, 2, 13, 14], [0, 12, 23, 24]],
    ("bidirectional", "circular"): [[11, 22, 3, 4], [21, 2, 13, 14], [1, 12, 23, 24]],
    # channel 0 takes frame t-1, channels 1-3 stay (online buffer layout).
    ("unidirectional", "zero"): [[0, 2, 3, 4], [1, 12, 13, 14], [11, 22, 23, 24]],
    ("unidirectional", "circular"): [[21, 2, 3, 4], [1, 12, 13, 14], [11, 22, 23, 24]],
}


def _as_nt(clips: list[list[list[int]]]) -> torch.Tensor:
    return torch.tensor(clips, dtype=torch.float32).flatten(0, 1)[..., None, None]


@pytest.mark.parametrize(("mode", "padding"), list(EXPECTED))
def test_shift_hand_built(mode: str, padding: str) -> None:
    # Two clips in the batch: the second must not borrow frames from the first.
    second = [[v + 100 for v in frame] for frame in CLIP]
    x = _as_nt([CLIP, second])
    out = temporal_shift(x, n_segment=3, shift_div=4, mode=mode, padding=padding)
    expected = EXPECTED[(mode, padding)]
    expected_second = [
        [v + 100 if v != 0 else 0 for v in frame] for frame in EXPECTED[(mode, padding)]
    ]
    assert out.shape == x.shape
    assert torch.equal(out, _as_nt([expected, expected_second]))


def test_shift_leaves_input_untouched() -> None:
    x = torch.randn(2 * 4, 16, 3, 3)
    before = x.clone()
    temporal_shift(x, n_segment=4)
    assert torch.equal(x, before)


@pytest.mark.parametrize(("c", "div", "t"), [(16, 8, 8), (10, 8, 4), (64, 4, 3), (3, 8, 5)])
def test_bidirectional_matches_reference(c: int, div: int, t: int) -> None:
    x = torch.randn(2 * t, c, 5, 4)
    assert torch.equal(temporal_shift(x, t, div), reference_shift(x, t, div))


def test_shift_handles_channels_last_input() -> None:
    x = torch.randn(2 * 4, 16, 6, 6)
    out = temporal_shift(x.to(memory_format=torch.channels_last), 4)
    assert torch.equal(out, reference_shift(x, 4, 8))


def test_single_frame_zero_pads_shifted_channels() -> None:
    x = torch.ones(3, 8, 2, 2)
    out = temporal_shift(x, n_segment=1, shift_div=4)
    assert out[:, :4].abs().sum() == 0
    assert torch.equal(out[:, 4:], x[:, 4:])


@pytest.mark.parametrize("mode", ["bidirectional", "unidirectional"])
@pytest.mark.parametrize("padding", ["zero", "circular"])
def test_gradients_flow_through_shift(mode: str, padding: str) -> None:
    x = torch.randn(2 * 3, 8, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: temporal_shift(t, 3, 4, mode, padding), (x,), eps=1e-6, atol=1e-6
    )
    # The gradient is the adjoint shift: moving the weights the other way.
    w = torch.randn(6, 8, 2, 2, dtype=torch.float64)
    (temporal_shift(x, 3, 4, mode, padding) * w).sum().backward()
    assert x.grad is not None
    v_grad, v_w = x.grad.view(2, 3, 8, 2, 2), w.view(2, 3, 8, 2, 2)
    if mode == "bidirectional":
        # Output frame t-1 read channels [0, 2) of input frame t.
        assert torch.equal(v_grad[:, 1:, :2], v_w[:, :-1, :2])
    else:
        assert torch.equal(v_grad[:, :-1, :2], v_w[:, 1:, :2])
    assert torch.equal(v_grad[:, :, 4:], v_w[:, :, 4:])


def test_shift_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        temporal_shift(torch.randn(7, 8, 2, 2), n_segment=4)


def test_temporal_shift_module_wraps_net_without_parameters() -> None:
    conv = nn.Conv2d(8, 4, 1)
    wrapped = TemporalShift(conv, n_segment=3, shift_div=4)
    own = [n for n, _ in wrapped.named_parameters() if not n.startswith("net.")]
    assert own == []
    assert sorted(wrapped.state_dict()) == ["net.bias", "net.weight"]
    x = torch.randn(6, 8, 4, 4)
    assert torch.allclose(wrapped(x), conv(temporal_shift(x, 3, 4)))


def test_temporal_pool_max_over_time() -> None:
    # T=4 -> 2 frames: window {-1,0,1} and {1,2,3} (kernel 3, stride 2, padding 1).
    frames = torch.tensor([5.0, 1.0, 7.0, 3.0, 10.0, 20.0, 30.0, 40.0]).view(8, 1, 1, 1)
    pool = TemporalPool(nn.Identity(), n_segment=4)
    out = pool(frames)
    assert out.flatten().tolist() == [5.0, 7.0, 20.0, 40.0]
    with pytest.raises(ValueError, match="T=4"):
        pool(torch.randn(6, 1, 1, 1))
