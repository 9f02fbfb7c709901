"""MobileNetV3-Large as torchvision defines it, for CPU comparisons (torchvision does not import here).

Howard et al., "Searching for MobileNetV3", ICCV 2019. The layer table, the squeeze-and-excitation
(hard-sigmoid, channels rounded to multiples of 8), hard-swish, BatchNorm (eps 0.001) and the
classifier (960 → 1280 → classes, dropout 0.2) follow ``torchvision.models.mobilenet_v3_large``;
with 1000 classes it has 5,483,032 parameters, torchvision's count (checked by
``tests/test_benchmarks_peers.py``). Random weights: a speed peer, not a trained model.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MobileNetV3Large"]


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class _ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.Hardswish) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=0.001, momentum=0.01),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.scale = nn.Hardsigmoid(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale(self.fc2(self.relu(self.fc1(self.avgpool(x)))))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: str, stride: int) -> None:
        super().__init__()
        activation = nn.Hardswish if act == "HS" else nn.ReLU
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(_ConvBNAct(cin, expanded, 1, act=activation))
        layers.append(_ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, act=activation))
        if se:
            layers.append(_SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8)))
        layers.append(_ConvBNAct(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


# input channels, kernel, expanded channels, output channels, SE, activation, stride (torchvision's table)
_LARGE = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
]


class MobileNetV3Large(nn.Module):
    """MobileNetV3-Large (torchvision's layout).

    Args:
        num_classes: Output classes.
        in_channels: Input channels.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNAct(in_channels, 16, 3, 2)]
        layers += [_InvertedResidual(*cfg) for cfg in _LARGE]
        layers.append(_ConvBNAct(160, 960, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(960, 1280), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True), nn.Linear(1280, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))
