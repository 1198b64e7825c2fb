"""CIFAR-style MobileNetV2 (Sandler et al. 2018) as defined by CRD (Tian et al. 2020).

Inverted residual blocks (1x1 expand, 3x3 depthwise, linear 1x1 project; identity shortcut where
shapes allow) in seven groups ``blocks.0..6`` with (t, c, n, s) = (1,16,1,1), (6,24,2,1),
(6,32,3,2), (6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) after a stride-2 stem, a 1x1 conv to
1280 channels, pooling and ``classifier``. As in CRD the t=1 group keeps its (1x) expansion conv,
and the default ``width_mult=0.5`` is the network CRD and mdistiller report as "MobileNetV2" (0.81M
parameters at 100 classes). Deviation: global pooling is adaptive, so any input side >= 8 works.

Group outputs end in BN with no ReLU (linear bottlenecks), so they are already pre-activation
features and its ``preact`` layers are its ``stages``.
"""

from __future__ import annotations

from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model

# (expansion t, channels c, repeats n, first stride s)
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]  # fmt: skip


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_shortcut = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_shortcut else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width_mult: float = 0.5):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTINGS:
            out_channels = int(c * width_mult)
            group = []
            for i in range(n):
                group.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            self.blocks.append(nn.Sequential(*group))
        last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last_channels, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

        # CRD's f1..f4: the ends of the groups at each resolution.
        stages = ("blocks.1", "blocks.2", "blocks.4", "blocks.6")
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=stages,
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
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        x = self.conv2(x)
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3, **kwargs) -> MobileNetV2:
    """CIFAR MobileNetV2; ``width_mult`` (default 0.5, CRD's student) scales every layer's width."""
    return MobileNetV2(num_classes, in_channels, **kwargs)
