"""CIFAR-style VGG with batch norm (Simonyan & Zisserman 2015) as defined by CRD (Tian et al. 2020).

Five blocks of 3x3 conv-BN-ReLU (64, 128, 256, 512, 512 channels) with 2x2 max-pooling after the
first three, global pooling and a single linear ``classifier`` (the fully connected layers of
ImageNet VGG are dropped). Configurations: vgg8 "S" (one conv per block), vgg11 "A", vgg13 "B",
vgg16 "D", vgg19 "E". Deviation: CRD also pools after block3 when the input is 64x64; kdscope never
does (use ``tv:vgg*`` for large images).
"""

from __future__ import annotations

from torch import Tensor, nn

from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model

_CONFIGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(in_channels: int, widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        # The block's last ReLU is not inplace: "<block>.<last>:in" captures its pre-activation.
        last = i == len(widths) - 1
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)]
        layers.append(nn.ReLU(inplace=not last))
        in_channels = width
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``block0..block4`` with ``pool0..pool2`` after the first three; pooling; ``classifier``."""

    def __init__(self, config: str, num_classes: int, in_channels: int = 3):
        super().__init__()
        cfg = _CONFIGS[config]
        self.block0 = _block(in_channels, cfg[0])
        self.pool0 = nn.MaxPool2d(2)
        self.block1 = _block(cfg[0][-1], cfg[1])
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = _block(cfg[1][-1], cfg[2])
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = _block(cfg[2][-1], cfg[3])
        self.block4 = _block(cfg[3][-1], cfg[4])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)

        # CRD's feature list f1..f4; block0 (full resolution, 64 channels) is the stem's analogue.
        stages = ("block1", "block2", "block3", "block4")
        self.kdscope_info = ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=tuple(f"{name}.{len(self.get_submodule(name)) - 1}:in" for name in stages),
            classifier="classifier",
            pooled_map="avgpool:in",
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block4(self.block3(x))
        return self.classifier(self.avgpool(x).flatten(1))


@register_model("vgg8")
def vgg8(num_classes: int, in_channels: int = 3, **kwargs) -> VGG:
    return VGG("S", num_classes, in_channels, **kwargs)


@register_model("vgg11")
def vgg11(num_classes: int, in_channels: int = 3, **kwargs) -> VGG:
    return VGG("A", num_classes, in_channels, **kwargs)


@register_model("vgg13")
def vgg13(num_classes: int, in_channels: int = 3, **kwargs) -> VGG:
    return VGG("B", num_classes, in_channels, **kwargs)


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int = 3, **kwargs) -> VGG:
    return VGG("D", num_classes, in_channels, **kwargs)


@register_model("vgg19")
def vgg19(num_classes: int, in_channels: int = 3, **kwargs) -> VGG:
    return VGG("E", num_classes, in_channels, **kwargs)
