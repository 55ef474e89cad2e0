"""Online (streaming) TSM: one frame in, one prediction out, constant memory.

With uni-directional shift a frame only needs the shifted channel slice of the
previous frame at each shift point, so the network can run frame by frame with a
small cache per shift point (the TSM paper's online mode). Its per-frame outputs
equal the offline uni-directional network's per-frame logits on the whole clip.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tsm_model.tsm import TSM


class _ShiftCache:
    """The first ``fold`` channels of the previous frame at one shift point."""

    def __init__(self) -> None:
        self.previous: Tensor | None = None

    def push(self, x: Tensor, fold: int) -> Tensor:
        out = torch.empty_like(x)
        if self.previous is None:
            out[:, :fold].zero_()
        elif self.previous.shape[0] != x.shape[0] or self.previous.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"frame shape changed mid-stream at a shift point (cached "
                f"{tuple(self.previous.shape)}, now {tuple(x.shape)}); call reset() first"
            )
        else:
            out[:, :fold] = self.previous
        out[:, fold:] = x[:, fold:]
        # A detached copy: keeps neither the whole activation nor an autograd graph alive.
        self.previous = x[:, :fold].detach().clone()
        return out


class OnlineTSM(nn.Module):
    """Run a uni-directional TSM (no temporal pooling) on a stream of frames.

    ``step(frame)`` takes ``(B, 3, H, W)`` and returns that frame's logits
    ``(B, num_classes)``; call ``reset()`` between videos. A TSN model (shift off) is
    accepted too and simply has no state.
    """

    def __init__(self, model: TSM) -> None:
        super().__init__()
        cfg = model.config
        if cfg.temporal_pool:
            raise ValueError(
                "OnlineTSM needs a model without temporal_pool (it mixes future frames)"
            )
        if cfg.shift and cfg.shift_mode != "unidirectional":
            raise ValueError(
                "OnlineTSM needs shift_mode='unidirectional' (a bidirectional shift reads the "
                "next frame); build or load the model with shift_mode='unidirectional'"
            )
        if cfg.shift and cfg.shift_padding != "zero":
            raise ValueError("OnlineTSM needs shift_padding='zero' (circular reads the clip end)")
        self.model = model
        self._points = model.shift_modules()
        self._caches = [_ShiftCache() for _ in self._points]

    def reset(self) -> None:
        """Forget the stream so far (start of a new video)."""
        for cache in self._caches:
            cache.previous = None

    def step(self, frame: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for the next frame ``(B, 3, H, W)`` of the stream."""
        if frame.dim() != 4 or frame.shape[1] != 3:
            raise ValueError(
                f"OnlineTSM.step expects a frame (B, 3, H, W), got {tuple(frame.shape)}"
            )
        for point, cache in zip(self._points, self._caches, strict=True):
            point.stream = cache
        try:
            feats = self.model.base_model(frame)
        finally:
            for point in self._points:
                point.stream = None
        return self.model.classify(feats)

    def forward(self, clip: Tensor) -> Tensor:
        """Per-frame logits ``(B, T, num_classes)`` for ``clip`` ``(B, T, 3, H, W)``.

        Continues the current stream; call ``reset()`` first for a new video.
        """
        if clip.dim() != 5:
            raise ValueError(f"OnlineTSM.forward expects (B, T, 3, H, W), got {tuple(clip.shape)}")
        return torch.stack([self.step(clip[:, t]) for t in range(clip.shape[1])], dim=1)
