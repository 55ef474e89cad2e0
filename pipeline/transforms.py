"""Frame preprocessing as a model's config asks: resize, centre crop, normalise.

Resizing and cropping happen on the CPU decode stage and keep frames uint8,
so the object store carries `T x 3 x S x S` bytes per clip rather than floats;
normalisation to float happens in the model actor, just before the forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F


def resize_crop(frames: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """`(T, H, W, 3)` uint8 frames -> `(T, 3, crop, crop)` uint8.

    The shorter side is resized to `resize_size` (antialiased bilinear), then
    the centre `crop_size` square is cut out.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    clip = F.resize(clip, [resize_size], antialias=True)
    clip = F.center_crop(clip, [crop_size, crop_size])
    return clip.contiguous().numpy()


def normalize(
    clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 `(..., 3, H, W)` -> float32 scaled to [0, 1] and normalised per channel."""
    x = clips.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x.sub_(m).div_(s)
