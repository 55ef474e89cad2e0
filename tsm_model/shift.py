"""The temporal shift operation and the modules that insert it (and temporal pooling).

Tensors inside the backbone are ``(N*T, C, H, W)``: frames of a clip are
consecutive along the batch axis, as in the reference implementation.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _shift_channels(out: Tensor, src: Tensor, offset: int, circular: bool) -> None:
    """Write ``out[:, t] = src[:, t + offset]`` for one channel group (offset is +1 or -1).

    ``out``/``src`` are ``(N, T, c, H, W)`` views. The frame that falls off the clip
    end gets zeros, or the frame from the other end when ``circular``.
    """
    if out.shape[2] == 0:
        return
    if offset == 1:
        out[:, :-1] = src[:, 1:]
        edge_out, edge_src = out[:, -1], src[:, 0]
    else:
        out[:, 1:] = src[:, :-1]
        edge_out, edge_src = out[:, 0], src[:, -1]
    if circular:
        edge_out.copy_(edge_src)
    else:
        edge_out.zero_()


def temporal_shift(
    x: Tensor,
    n_segment: int,
    shift_div: int = 8,
    mode: str = "bidirectional",
    padding: str = "zero",
) -> Tensor:
    """Shift a fraction of channels along time; returns a new tensor, ``x`` is untouched.

    ``x`` is ``(N*T, C, H, W)`` with ``T = n_segment``; ``fold = C // shift_div``.
    Bidirectional (offline): channels ``[0, fold)`` take frame t+1's values, channels
    ``[fold, 2*fold)`` take frame t-1's. Unidirectional (online): channels ``[0, fold)``
    take frame t-1's. Other channels are copied. Clip ends get zeros, or wrap around
    with ``padding="circular"``.
    """
    nt, c = x.shape[0], x.shape[1]
    if x.dim() != 4 or nt % n_segment:
        raise ValueError(
            f"temporal_shift expects (N*T, C, H, W) with N*T divisible by T={n_segment}, "
            f"got shape {tuple(x.shape)}"
        )
    fold = c // shift_div
    circular = padding == "circular"
    # One write per output element: cheaper than the reference's zeros + copies, and
    # `x` stays intact because the residual identity still reads it.
    clip = x.unflatten(0, (nt // n_segment, n_segment))
    out = torch.empty_like(clip)
    if mode == "bidirectional":
        _shift_channels(out[:, :, :fold], clip[:, :, :fold], +1, circular)
        _shift_channels(out[:, :, fold : 2 * fold], clip[:, :, fold : 2 * fold], -1, circular)
        kept = 2 * fold
    elif mode == "unidirectional":
        _shift_channels(out[:, :, :fold], clip[:, :, :fold], -1, circular)
        kept = fold
    else:
        raise ValueError(f"unknown shift mode {mode!r}")
    out[:, :, kept:] = clip[:, :, kept:]
    return out.flatten(0, 1)


class StreamCache(Protocol):
    """Per-shift-point state used when a network runs one frame at a time."""

    def push(self, x: Tensor, fold: int) -> Tensor:
        """Return ``x`` with its first ``fold`` channels replaced by the previous frame's."""
        ...


class TemporalShift(nn.Module):
    """Shift channels in time, then run the wrapped module ``net``.

    Holds no parameters of its own; ``net``'s stay under ``.net`` as in the reference
    state-dicts (``layer1.0.conv1.net.weight``).
    """

    def __init__(
        self,
        net: nn.Module,
        n_segment: int,
        shift_div: int = 8,
        mode: str = "bidirectional",
        padding: str = "zero",
    ) -> None:
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.shift_div = shift_div
        self.mode = mode
        self.padding = padding
        # Set only while `OnlineTSM` steps a frame through; None means offline.
        self.stream: StreamCache | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.stream is not None:
            x = self.stream.push(x, x.shape[1] // self.shift_div)
        else:
            x = temporal_shift(x, self.n_segment, self.shift_div, self.mode, self.padding)
        return self.net(x)

    def extra_repr(self) -> str:
        return (
            f"n_segment={self.n_segment}, shift_div={self.shift_div}, mode={self.mode}, "
            f"padding={self.padding}"
        )


class TemporalPool(nn.Module):
    """Max-pool over time (kernel 3, stride 2, padding 1), then run ``net``.

    Wraps ResNet stage 2 as ``layer2.net`` like the reference, halving the frames
    seen by stages 2-4.
    """

    def __init__(self, net: nn.Module, n_segment: int) -> None:
        super().__init__()
        self.net = net
        self.n_segment = n_segment

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[0] % self.n_segment:
            raise ValueError(
                f"TemporalPool expects (N*T, C, H, W) with T={self.n_segment}, "
                f"got shape {tuple(x.shape)}"
            )
        clip = x.unflatten(0, (x.shape[0] // self.n_segment, self.n_segment)).transpose(1, 2)
        pooled = F.max_pool3d(clip, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
        return self.net(pooled.transpose(1, 2).flatten(0, 1))

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}"
