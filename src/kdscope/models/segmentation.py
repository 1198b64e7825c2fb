"""FCN segmenters (Long, Shelhamer and Darrell 2015, "Fully Convolutional Networks for Semantic
Segmentation", arXiv:1411.4038) on the zoo's CIFAR-style ResNet backbones.

The backbone's stem and three stages run at strides 1, 2 and 4. A 1x1 classifier scores the last
stage; FCN-8s-style skips add 1x1 scores of the two earlier stages: the coarse scores are
upsampled bilinearly (x2) and summed with the next finer ones, stage 3 -> 2 -> 1, and the sum is
resized bilinearly to the input. Output: per-pixel logits (B, num_classes, H, W).

Deviations from the paper: the skip scorers are zero-initialised as in FCN-8s, but all layers
train at once (FCN trains 32s, then 16s, then 8s); upsampling is fixed bilinear instead of learnt
deconvolution; and the finest skip is stride 1 because CIFAR ResNets never go below stride 4.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from kdscope.models.dense_backbone import build_resnet, stage_body, stage_layers, stage_widths
from kdscope.models.info import ModelInfo
from kdscope.models.registry import register_model
from kdscope.models.resnet import (
    CifarResNet,
    resnet8,
    resnet8x4,
    resnet14,
    resnet20,
    resnet32,
    resnet32x4,
    resnet56,
)


class FCN(nn.Module):
    """An FCN-8s-style head over a :class:`~kdscope.models.resnet.CifarResNet`'s stages.

    ``backbone`` keeps the ResNet's stem and ``layer1..layer3`` (its pooling and classifier are
    dropped); ``score`` scores the last stage and ``skips`` the two earlier ones.
    """

    def __init__(self, resnet: CifarResNet, num_classes: int):
        super().__init__()
        self.backbone = stage_body(resnet)
        widths = list(stage_widths(resnet).values())
        self.score = nn.Conv2d(widths[-1], num_classes, 1)
        self.skips = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in widths[:-1])
        for skip in self.skips:
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)
        stages, preact = stage_layers(resnet, "backbone")
        self.kdscope_info = ModelInfo(
            output="pixels",
            num_classes=num_classes,
            in_channels=resnet.conv1.in_channels,
            stages=stages,
            preact=preact,
            # The 1x1 scorer of the last stage is a linear classifier of each of its pixels:
            # GLD pools the stage and scores it with it, CRCD embeds the stage's whole map.
            classifier="score",
            pooled_map=stages[-1],
        )

    def forward(self, x: Tensor) -> Tensor:
        features = list(self.backbone(x).values())
        scores = self.score(features[-1])
        for skip, feature in zip(reversed(self.skips), reversed(features[:-1]), strict=True):
            up = F.interpolate(
                scores, size=feature.shape[-2:], mode="bilinear", align_corners=False
            )
            scores = up + skip(feature)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _fcn(backbone, num_classes: int, in_channels: int, **kwargs) -> FCN:
    return FCN(build_resnet(backbone, in_channels, **kwargs), num_classes)


@register_model("fcn_resnet8", task="segmentation")
def fcn_resnet8(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet8, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet14", task="segmentation")
def fcn_resnet14(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet14, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet20", task="segmentation")
def fcn_resnet20(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet20, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet32", task="segmentation")
def fcn_resnet32(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet32, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet56", task="segmentation")
def fcn_resnet56(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet56, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet8x4", task="segmentation")
def fcn_resnet8x4(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet8x4, num_classes, in_channels, **kwargs)


@register_model("fcn_resnet32x4", task="segmentation")
def fcn_resnet32x4(num_classes: int, in_channels: int = 3, **kwargs) -> FCN:
    return _fcn(resnet32x4, num_classes, in_channels, **kwargs)
