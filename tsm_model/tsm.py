"""TSM networks over torchvision backbones (ResNet-18/34/50/101, MobileNetV2).

Module names mirror the official TSM release (minus DataParallel's ``module.``), so
its weights map onto ours key for key: backbone under ``base_model.``, shifted
convs under ``.net``, the classifier as ``new_fc``.
"""

from __future__ import annotations

import torchvision
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import ResNet

from tsm_model.config import TSMConfig
from tsm_model.shift import TemporalPool, TemporalShift

FEATURE_DIMS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "mobilenetv2": 1280,
}


def _shift(net: nn.Module, n_segment: int, config: TSMConfig) -> TemporalShift:
    return TemporalShift(net, n_segment, config.shift_div, config.shift_mode, config.shift_padding)


def _add_resnet_shift(net: ResNet, config: TSMConfig) -> None:
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    # With temporal pooling in front of stage 2, stages 2-4 see half the frames.
    segments = [config.num_segments] + [config.frames_after_pool] * 3
    # The reference shifts every other block of very deep nets (ResNet-101) only.
    n_round = 2 if len(net.layer3) >= 23 else 1
    for stage, n_segment in zip(stages, segments, strict=True):
        for i, block in enumerate(stage):
            if config.shift_place == "block":
                stage[i] = _shift(block, n_segment, config)
            elif i % n_round == 0:
                block.conv1 = _shift(block.conv1, n_segment, config)


def _resnet(config: TSMConfig) -> ResNet:
    net: ResNet = getattr(torchvision.models, config.arch)(weights=None)
    net.fc = nn.Identity()
    if config.shift:
        _add_resnet_shift(net, config)
    if config.temporal_pool:
        net.layer2 = TemporalPool(net.layer2, config.num_segments)
    return net


def _mobilenet_v2(config: TSMConfig) -> nn.Module:
    net = torchvision.models.mobilenet_v2(weights=None)
    net.classifier = nn.Identity()
    if config.shift:
        for block in net.features:
            if isinstance(block, InvertedResidual) and block.use_res_connect:
                # conv[0] is the expansion Conv-BN-ReLU; shift feeds its conv only so
                # the BN keys stay where torchvision puts them.
                expand = block.conv[0]
                expand[0] = _shift(expand[0], config.num_segments, config)
    return net


class TSM(nn.Module):
    """Temporal Shift Module network; with ``config.shift=False`` it is the TSN baseline.

    Input clips are float ``(B, T, 3, H, W)``, already normalised, with
    ``T == config.num_segments`` whenever shift or temporal pooling is on.
    """

    def __init__(self, config: TSMConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_dim = FEATURE_DIMS[config.arch]
        self.base_model = _mobilenet_v2(config) if config.arch == "mobilenetv2" else _resnet(config)
        self.dropout = nn.Dropout(config.dropout)
        self.new_fc = nn.Linear(self.feature_dim, config.num_classes)
        # Same initialisation as the reference's new classifier.
        nn.init.normal_(self.new_fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.new_fc.bias)

    def shift_modules(self) -> list[TemporalShift]:
        """The shift points, in forward order."""
        return [m for m in self.modules() if isinstance(m, TemporalShift)]

    def _check_clip(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"TSM expects a clip (B, T, 3, H, W), got shape {tuple(x.shape)}")
        cfg = self.config
        if (cfg.shift or cfg.temporal_pool) and x.shape[1] != cfg.num_segments:
            raise ValueError(
                f"this model was built for num_segments={cfg.num_segments} frames per clip "
                f"but got T={x.shape[1]}; sample {cfg.num_segments} frames or rebuild/load "
                f"it with num_segments={x.shape[1]}"
            )

    def frame_features(self, x: Tensor) -> Tensor:
        """Pooled backbone features per frame, ``(B, T', D)`` (T' = T // 2 with temporal pool)."""
        self._check_clip(x)
        feats = self.base_model(x.flatten(0, 1))
        return feats.unflatten(0, (x.shape[0], -1))

    def classify(self, frame_features: Tensor) -> Tensor:
        """The head: per-frame features ``(..., D)`` -> per-frame logits ``(..., num_classes)``."""
        return self.new_fc(self.dropout(frame_features))

    def frame_logits(self, x: Tensor) -> Tensor:
        """Per-frame logits ``(B, T', num_classes)`` before the segment consensus."""
        return self.classify(self.frame_features(x))

    def features(self, x: Tensor) -> Tensor:
        """Per-video embedding ``(B, D)``: pooled features averaged over time."""
        return self.frame_features(x).mean(dim=1)

    def logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(forward(x), features(x))`` from one backbone pass: what a labelling job needs."""
        frames = self.frame_features(x)
        return self.classify(frames).mean(dim=1), frames.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Video logits ``(B, num_classes)``: per-frame logits averaged (consensus)."""
        return self.frame_logits(x).mean(dim=1)


def build(config: TSMConfig) -> TSM:
    """A TSM network for ``config`` with random weights (no download, ever)."""
    if not isinstance(config, TSMConfig):
        raise TypeError(f"build() takes a TSMConfig, got {type(config).__name__}")
    return TSM(config)
