"""Test helper: a small re-implementation of the reference TSM forward pass.

It follows mit-han-lab/temporal-shift-module (ops/models.py, ops/temporal_shift.py,
archs/mobilenet_v2.py) in behaviour and parameter names, written independently of
`tsm_model`, so the state-dicts it produces are laid out like the official model
zoo files and its logits are what those models compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn


def reference_shift(x: Tensor, n_segment: int, fold_div: int = 8) -> Tensor:
    """The reference shift op: zeros, then three slice copies (next / previous / unchanged)."""
    nt, c, h, w = x.size()
    x5 = x.view(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x5)
    out[:, :-1, :fold] = x5[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = x5[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = x5[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class RefShift(nn.Module):
    """Reference shift module: `reference_shift`, then the wrapped conv."""

    def __init__(self, net: nn.Module, n_segment: int, n_div: int) -> None:
        super().__init__()
        self.net, self.n_segment, self.fold_div = net, n_segment, n_div

    def forward(self, x: Tensor) -> Tensor:
        return self.net(reference_shift(x, self.n_segment, self.fold_div))


class RefPool(nn.Module):
    """Reference temporal max-pool wrapper around ResNet stage 2."""

    def __init__(self, net: nn.Module, n_segment: int) -> None:
        super().__init__()
        self.net, self.n_segment = net, n_segment

    def forward(self, x: Tensor) -> Tensor:
        nt, c, h, w = x.size()
        x5 = x.view(nt // self.n_segment, self.n_segment, c, h, w).transpose(1, 2)
        x5 = F.max_pool3d(x5, kernel_size=(3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0))
        return self.net(x5.transpose(1, 2).contiguous().view(nt // 2, c, h, w))


def _conv_bn(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    )


class RefInvertedResidual(nn.Module):
    """archs/mobilenet_v2.py layout: a flat Sequential of 5 (t=1) or 8 layers."""

    def __init__(self, inp: int, oup: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = inp * t
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if t != 1:
            layers += [
                nn.Conv2d(inp, hidden, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(True),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(True),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class RefMobileNetV2(nn.Module):
    """The reference MobileNetV2 (width 1.0) with the classifier replaced by dropout."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(RefInvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(_conv_bn(inp, 1280, 1, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(3).mean(2))


class RefTSN(nn.Module):
    """The reference TSN/TSM wrapper: base_model, then new_fc, then average consensus."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        num_segments: int,
        shift: bool = True,
        shift_div: int = 8,
        place: str = "blockres",
        temporal_pool: bool = False,
    ) -> None:
        super().__init__()
        self.num_segments, self.temporal_pool = num_segments, temporal_pool
        if arch == "mobilenetv2":
            self.base_model: nn.Module = RefMobileNetV2()
            if shift:
                for m in self.base_model.modules():
                    if (
                        isinstance(m, RefInvertedResidual)
                        and len(m.conv) == 8
                        and m.use_res_connect
                    ):
                        m.conv[0] = RefShift(m.conv[0], num_segments, shift_div)
            feature_dim = 1280
        else:
            base = getattr(torchvision.models, arch)(weights=None)
            if shift:
                _ref_resnet_shift(base, num_segments, shift_div, place, temporal_pool)
            if temporal_pool:
                base.layer2 = RefPool(base.layer2, num_segments)
            feature_dim = base.fc.in_features
            base.fc = nn.Dropout(0.5)
            self.base_model = base
        self.new_fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.new_fc(self.base_model(x.view(-1, 3, *x.shape[-2:])))
        segments = self.num_segments // 2 if self.temporal_pool else self.num_segments
        return out.view(-1, segments, *out.shape[1:]).mean(dim=1)


def _ref_resnet_shift(net: nn.Module, n: int, div: int, place: str, tpool: bool) -> None:
    segments = [n, n // 2, n // 2, n // 2] if tpool else [n] * 4
    n_round = 2 if len(list(net.layer3.children())) >= 23 else 1
    for name, n_seg in zip(("layer1", "layer2", "layer3", "layer4"), segments, strict=True):
        blocks = list(getattr(net, name).children())
        for i, b in enumerate(blocks):
            if place == "block":
                blocks[i] = RefShift(b, n_seg, div)
            elif i % n_round == 0:
                b.conv1 = RefShift(b.conv1, n_seg, div)
        setattr(net, name, nn.Sequential(*blocks))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN and the classifier random, well-scaled values, so a key mix-up shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 0.5 + 0.75)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.1)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model.eval()


def official_checkpoint(model: RefTSN) -> dict[str, object]:
    """What the reference's training script saves (DataParallel-wrapped state-dict)."""
    state = {"module." + k: v for k, v in model.state_dict().items()}
    return {"epoch": 50, "arch": "x", "state_dict": state, "best_prec1": 71.2}
