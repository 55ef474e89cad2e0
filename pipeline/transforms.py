"""Frame preprocessing as a model's config asks: resize, centre crop, normalise.

Resizing and cropping happen on the CPU decode stage and keep frames uint8,
so the object store carries `T x 3 x S x S` bytes per clip rather than floats;
normalisation to float happens in the model actor, just before the forward.

The arithmetic is torchvision's `transforms.v2` resize (antialiased bilinear)
and centre crop, the models' training transforms, done with torch alone: the
decode tasks then skip importing torchvision, about 1.5 s of CPU for every
worker process that starts (tests/pipeline/test_transforms.py holds the two
equal, bit for bit).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import numpy as np
import torch


def _uint8_kernel() -> bool:
    """Whether torch resizes uint8 frames natively here (torchvision's rule: with AVX2 or on
    ARM; elsewhere it resizes in float32 and rounds, which gives other bytes)."""
    return (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            or platform.machine() in ("aarch64", "arm64"))


def resize_crop(frames: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """`(T, H, W, 3)` uint8 frames -> `(T, 3, crop, crop)` uint8.

    The shorter side is resized to `resize_size` (antialiased bilinear), then
    the centre `crop_size` square is cut out.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got shape {frames.shape}")
    height, width = frames.shape[1:3]
    if min(height, width) < 1 or resize_size < crop_size:
        raise ValueError(f"cannot crop {crop_size} px from {width}x{height} frames resized "
                         f"to {resize_size}")
    short, long = sorted((height, width))
    long = int(resize_size * long / short)  # torchvision's rounding of the longer side
    size = (resize_size, long) if height <= width else (long, resize_size)
    clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if size != (height, width):
        native = _uint8_kernel()
        x = clip if native else clip.float()
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                            align_corners=False, antialias=True)
        clip = x if native else x.round_().to(torch.uint8)
    top = round((size[0] - crop_size) / 2)  # half to even, as torchvision
    left = round((size[1] - crop_size) / 2)
    return clip[..., top:top + crop_size, left:left + crop_size].contiguous().numpy()


def normalize(
    clips: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 `(..., 3, H, W)` -> float32 scaled to [0, 1] and normalised per channel."""
    x = clips.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x.sub_(m).div_(s)
