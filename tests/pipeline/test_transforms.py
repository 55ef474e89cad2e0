"""Frame preprocessing equals the models' training transforms (torchvision's), byte for byte."""

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from pipeline import transforms
from pipeline.transforms import resize_crop


def torchvision_resize_crop(frames: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)
    clip = F.resize(clip, [resize_size], antialias=True)
    return F.center_crop(clip, [crop_size, crop_size]).contiguous().numpy()


@pytest.mark.parametrize("height,width", [(720, 1280), (272, 640), (1080, 608), (257, 256),
                                          (256, 300), (255, 511), (90, 160), (224, 224)])
@pytest.mark.parametrize("resize_size,crop_size", [(256, 224), (128, 112), (224, 224)])
def test_resize_crop_is_torchvisions(height, width, resize_size, crop_size):
    rng = np.random.default_rng(height * width + resize_size)
    # smooth content and noise: interpolation errors show on both
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 64, (3, height, width, 3))
    frames = np.clip(ramp + noise, 0, 255).astype(np.uint8)
    ours = resize_crop(frames, resize_size, crop_size)
    assert ours.shape == (3, 3, crop_size, crop_size) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, torchvision_resize_crop(frames, resize_size, crop_size))


def test_resize_crop_without_the_uint8_kernel_rounds_as_torchvision(monkeypatch):
    """On CPUs where torch has no native uint8 resize, the float path gives the same bytes as
    torchvision's there (it resizes in float32 and rounds)."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 300, 400, 3), dtype=np.uint8)
    monkeypatch.setattr(transforms, "_uint8_kernel", lambda: False)
    ours = resize_crop(frames, 256, 224)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    expected = F.center_crop(F.resize(clip, [256], antialias=True), [224, 224])
    np.testing.assert_array_equal(ours, expected.round().to(torch.uint8).numpy())


@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 32, 32, 4), (0, 0, 0, 3)])
def test_resize_crop_rejects_what_is_not_frames(shape):
    with pytest.raises(ValueError):
        resize_crop(np.zeros(shape, np.uint8), 256, 224)


def test_decode_tasks_do_not_import_torchvision():
    """The decode stage's imports stay light: every decode worker process pays for them."""
    import subprocess
    import sys

    code = "import sys, pipeline.decode_stage; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
