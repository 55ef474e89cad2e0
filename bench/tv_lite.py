"""The two torchvision backbones TSM uses (ResNet, MobileNetV2), in plain torch, for GPU boxes
without torchvision.

`bench/gpu_check.py` installs this module as `torchvision` (with `torchvision.models`,
`.models.resnet` and `.models.mobilenetv2`) only when the real one cannot be imported,
so `tsm_model.tsm` builds unchanged. The networks have torchvision's module names,
parameter shapes and forward pass (ResNet v1.5: stride in the 3x3 conv of a
bottleneck), so a state dict moves between the two and the FLOPs are the same;
tests/test_gpu_check.py checks both against torchvision. Weights are random: the
benchmark measures speed and memory, not accuracy.
"""

from __future__ import annotations

import sys
import types

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------- ResNet


def _conv3(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=False)


def _conv1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int],
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(_conv1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        stage += [block(out, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet(block, layers: list[int], weights=None, **kwargs) -> ResNet:
    if weights is not None:
        raise ValueError("tv_lite has no pretrained weights")
    return ResNet(block, layers, **kwargs)


def resnet18(weights=None, **kwargs) -> ResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, **kwargs)


def resnet34(weights=None, **kwargs) -> ResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, **kwargs)


def resnet50(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, **kwargs)


def resnet101(weights=None, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, **kwargs)


# ----------------------------------------------------------------------------- MobileNetV2


class ConvBNReLU6(nn.Sequential):
    """Conv, batch norm, ReLU6: torchvision's Conv2dNormActivation as MobileNetV2 uses it."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))
        self.out_channels = cout


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        self.stride = stride
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, first stride s), as in the MobileNetV2 paper
_MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in _MOBILENET_V2:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.last_channel = 1280
        features.append(ConvBNReLU6(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout),
                                        nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(weights=None, **kwargs) -> MobileNetV2:
    if weights is not None:
        raise ValueError("tv_lite has no pretrained weights")
    return MobileNetV2(**kwargs)


# ----------------------------------------------------------------------------- as torchvision


def install() -> None:
    """Register this module as `torchvision` (models only) in `sys.modules`."""
    me = sys.modules[__name__]
    tv = types.ModuleType("torchvision")
    tv.__version__ = "tv_lite"  # type: ignore[attr-defined]
    tv.__path__ = []  # type: ignore[attr-defined]  # a package, so submodules resolve
    models = types.ModuleType("torchvision.models")
    models.__path__ = []  # type: ignore[attr-defined]
    resnet = types.ModuleType("torchvision.models.resnet")
    mobilenetv2 = types.ModuleType("torchvision.models.mobilenetv2")
    for name in ("ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
                 "resnet101"):
        setattr(resnet, name, getattr(me, name))
        setattr(models, name, getattr(me, name))
    for name in ("MobileNetV2", "InvertedResidual", "mobilenet_v2"):
        setattr(mobilenetv2, name, getattr(me, name))
        setattr(models, name, getattr(me, name))
    tv.models = models  # type: ignore[attr-defined]
    models.resnet, models.mobilenetv2 = resnet, mobilenetv2  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": tv, "torchvision.models": models,
                        "torchvision.models.resnet": resnet,
                        "torchvision.models.mobilenetv2": mobilenetv2})
