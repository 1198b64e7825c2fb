"""Wide ResNets WRN-d-w (Zagoruyko & Komodakis 2016) as defined by CRD (Tian et al. 2020).

Pre-activation blocks (BN-ReLU-conv), three stages of n = (d - 4) / 6 blocks with 16w, 32w, 64w
channels, a final BN-ReLU, global pooling and ``classifier``. Deviation: global pooling is adaptive
instead of ``avg_pool2d(8)``, so any input side >= 8 works; at 32x32 the two are identical.

Stage outputs are sums that no ReLU has touched yet; the pre-activation features that OFD distils
are those sums after the next BN, as in CRD: the inputs of ``block2.0.relu1``, ``block3.0.relu1``
and of the final ``act``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 with an identity or 1x1-conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # not inplace: "<block>.relu1:in" is a pre-activation feature
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # A projection shortcut sees the activated input, an identity one the raw input (as in CRD).
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    """WRN-depth-widen_factor; ``block1..block3`` are the stages."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(
                f"depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
            )
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, 1, drop_rate)
        self.block2 = self._stage(widths[1], widths[2], n, 2, drop_rate)
        self.block3 = self._stage(widths[2], widths[3], n, 2, drop_rate)
        self.bn = nn.BatchNorm2d(widths[3])
        self.act = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)

        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=("block1", "block2", "block3"),
            preact=("block2.0.relu1:in", "block3.0.relu1:in", "act:in"),
            classifier="classifier",
            pooled_map="avgpool:in",
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int, drop: float) -> nn.Sequential:
        layers = [WideBlock(in_planes, planes, stride, drop)]
        layers += [WideBlock(planes, planes, 1, drop) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.act(self.bn(x))
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_channels, **kwargs)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels, **kwargs)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels, **kwargs)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int, in_channels: int = 3, **kwargs) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels, **kwargs)
