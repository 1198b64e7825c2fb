"""CIFAR-style ResNets as defined by CRD (Tian et al. 2020) and mdistiller.

He et al. 2016, Sec. 4.2: a 3x3 stem, three stages of BasicBlocks at 1, 1/2 and 1/4 resolution and
depth = 6n + 2. ``resnet8x4``/``resnet32x4`` are CRD's 4x-wide variants (stem 32, stages
64/128/256). Shortcuts that change shape are 1x1 conv + BN (option B), as in CRD, which fixes the
parameter counts (resnet56: 0.86M, resnet32x4: 7.43M at 100 classes). Deviation: global pooling is
adaptive instead of ``AvgPool2d(8)``, so any input side >= 8 works; at 32x32 the two are identical.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ``act``.

    ``act`` is a separate, non-inplace ReLU so that ``"<block>.act:in"`` captures the pre-activation
    sum (OFD distils it).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.act(out + shortcut)


class CifarResNet(nn.Module):
    """Stem, ``layer1..layer3`` (n blocks each; stride 1, 2, 2), global pooling, ``classifier``.

    Args:
        depth: 6n + 2.
        widths: channels of the stem and of the three stages.
    """

    def __init__(
        self, depth: int, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._stage(widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(widths[2], widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)

        stages = ("layer1", "layer2", "layer3")
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=tuple(f"{stage}.{n - 1}.act:in" for stage in stages),
            classifier="classifier",
            pooled_map="avgpool:in",
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(self.avgpool(x).flatten(1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(8, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet14")
def resnet14(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(14, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(20, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(32, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet44")
def resnet44(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(44, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(56, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet110")
def resnet110(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(110, _NARROW, num_classes, in_channels, **kwargs)


@register_model("resnet8x4")
def resnet8x4(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(8, _WIDE, num_classes, in_channels, **kwargs)


@register_model("resnet32x4")
def resnet32x4(num_classes: int, in_channels: int = 3, **kwargs) -> CifarResNet:
    return CifarResNet(32, _WIDE, num_classes, in_channels, **kwargs)
