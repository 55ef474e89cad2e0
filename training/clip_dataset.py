"""A torch Dataset of TSN-sampled clips over a labelled manifest, for training and validation.

Reads each video through the shared storage, decoder, sampler and transforms,
so training sees frames exactly as the label job does. Training clips get a
random frame inside each segment and light augmentation that cannot turn one
class into another: a random resized crop over a small scale range and
brightness/contrast jitter, the same for every frame of a clip. No horizontal
flips, rotations or time reversal: each would swap a class with its pair
(moving left/right, rotating clockwise/anticlockwise, appearing/disappearing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from pipeline.decoders import DecodeError, decoder_for
from pipeline.errors import LabelError
from pipeline.sampling import sampler
from pipeline.settings import LabelConfig
from pipeline.store import ObjectInfo, store_for
from pipeline.transforms import resize_crop

# read videos as the label job does
WHOLE_BELOW = int(LabelConfig.whole_read_mb * 1024 * 1024)


@dataclass(frozen=True)
class Augment:
    """Training augmentation: crop area fraction and aspect range, photometric jitter."""

    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.25
    contrast: float = 0.25


def read_labelled_manifest(path: str | Path) -> list[tuple[str, str]]:
    """(uri, label) rows of a manifest (CSV, Parquet or JSONL) with `uri` and `label` columns.

    Read with the label job's manifest reader, so URIs resolve the same way
    (relative paths are relative to the manifest's folder).
    """
    from pipeline.listing import Manifest

    uri = str(path)
    rows: list[tuple[str, str]] = []
    try:
        manifest = Manifest(uri, text_columns=("label",))
        for batch in manifest.batches():
            labels = manifest.column(batch, "label")
            if labels is None or manifest.column(batch, "uri") is None:
                raise ValueError(f"{uri}: a labelled manifest needs columns uri and label; it "
                                 f"has {', '.join(batch.schema.names) or 'none'}")
            for u, label in zip(manifest.uris(batch), labels, strict=True):
                if not u or not label:
                    raise ValueError(f"{uri}: row {len(rows) + 2} has an empty uri or label")
                rows.append((u, label))
    except LabelError as e:
        raise ValueError(str(e)) from None
    return rows


def class_names_for(manifest: str | Path, labels: list[str]) -> list[str]:
    """Class order: `classes.json` next to the manifest if there is one, else sorted labels."""
    listing = Path(manifest).parent / "classes.json"
    if listing.is_file():
        names = [str(n) for n in json.loads(listing.read_text())]
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise ValueError(f"labels not in {listing}: {', '.join(unknown)}")
        return names
    return sorted(set(labels))


class ClipDataset(Dataset):
    """`(clip uint8 (T, 3, S, S), label id)` per manifest row.

    Randomness is a pure function of (seed, epoch, index), so a run is
    reproducible whatever the worker count; call `set_epoch` each epoch.
    """

    def __init__(
        self,
        rows: list[tuple[str, int]],
        num_segments: int,
        input_size: int,
        resize_size: int,
        *,
        train: bool,
        augment: Augment | None = None,
        seed: int = 0,
    ):
        self.rows = rows
        self.num_segments = num_segments
        self.input_size = input_size
        self.resize_size = resize_size
        self.train = train
        self.augment = augment or Augment()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        uri, label = self.rows[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        frames_of = sampler("uniform", self.num_segments, train=self.train, rng=rng)
        with store_for(uri).open_video(ObjectInfo(uri, -1, ""), WHOLE_BELOW) as video:
            try:
                frames = decoder_for("cpu").decode(video, frames_of).frames
            except DecodeError as e:
                # a training set with a broken video is a data bug to fix, so say which one
                raise ValueError(f"{uri}: cannot decode ({e.kind}): {e.message}") from None
        if not self.train:
            return torch.from_numpy(resize_crop(frames, self.resize_size, self.input_size)), label
        return self._augment(frames, rng), label

    def _augment(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """One random resized crop and one photometric jitter for the whole clip."""
        a = self.augment
        clip = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        h, w = clip.shape[-2:]
        area = h * w * rng.uniform(*a.scale)
        aspect = math.exp(rng.uniform(math.log(a.ratio[0]), math.log(a.ratio[1])))
        ch = min(h, round(math.sqrt(area / aspect)))
        cw = min(w, round(math.sqrt(area * aspect)))
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        size = [self.input_size, self.input_size]
        clip = F.resized_crop(clip, top, left, ch, cw, size, antialias=True)
        clip = F.adjust_brightness(clip, float(rng.uniform(1 - a.brightness, 1 + a.brightness)))
        clip = F.adjust_contrast(clip, float(rng.uniform(1 - a.contrast, 1 + a.contrast)))
        return clip.contiguous()
