"""FCOS detectors (Tian, Shen, Chen and He 2019, "FCOS: Fully Convolutional One-Stage Object
Detection", arXiv:1904.01355) on the zoo's CIFAR-style ResNet backbones, sized for small inputs.

torchvision's ``FCOS`` does everything detection-specific: centre sampling and scale-range
assignment, sigmoid focal, GIoU and centre-ness losses, box coding, score thresholding and NMS.
kdscope supplies the backbone, through torchvision's ``IntermediateLayerGetter`` and
``FeaturePyramidNetwork``: FPN levels over ``layer2`` and ``layer3`` (strides 2 and 4; 32x32 and
16x16 locations on a 64x64 input), one point per location whose size is the level's stride (as in
torchvision's default FCOS: size 8 at stride 8). torchvision assigns an object to a level when
the largest distance from a location to the box's sides, max(l, t, r, b), lies between 4 and 8
point sizes, the first level starting at 0 and the last unbounded: here up to 16 pixels on the
stride-2 level and above 16 on the stride-4 one, so objects up to about 32 pixels a side are
detected on the fine level and larger ones on the coarse.

FCOS was chosen over RetinaNet because it is anchor-free: one prediction per location instead of
nine anchors (9x fewer outputs to score and to distil), no anchor shapes to tune to 64-pixel
scenes, and its per-location class logits are exactly the "vector-based prediction" whose
teacher-student KL the KRS paper's AOA averages.

Deviations from torchvision's ``fcos_resnet50_fpn``: two FPN levels of 64 channels, no P6/P7,
heads of two convolutions instead of four, ``score_thresh`` 0.05 (COCO evaluation's usual value,
so mAP sees low-confidence detections), and the input transform neither normalises (the data
already is) nor resizes.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

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

FPN_FROM = ("layer2", "layer3")
STRIDES = (2, 4)
FPN_CHANNELS = 64
HEAD_CONVS = 2


def _as_is_transform(in_channels: int) -> nn.Module:
    """torchvision's detection transform without its normalisation and resizing: kdscope's data
    is normalised already, and the scenes are the size the model is built for. Images are still
    batched (padded to a common size) and boxes mapped back, which here are identities."""
    # torchvision is imported where detectors are built: it takes seconds to import.
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class AsIs(GeneralizedRCNNTransform):
        def normalize(self, image: Tensor) -> Tensor:
            return image

        def resize(self, image: Tensor, target=None):
            return image, target

    # min/max size and statistics are unused; size_divisible 1 adds no padding.
    return AsIs(1, 1, [0.0] * in_channels, [1.0] * in_channels, 1)


class ResNetFPN(nn.Module):
    """``body``: the ResNet's stem and stages; ``fpn``: a pyramid over ``FPN_FROM``. Returns the
    levels as an ordered dict, finest first, as torchvision's ``BackboneWithFPN`` does (which
    cannot be used as is: it always adds a max-pooled extra level)."""

    def __init__(self, resnet: CifarResNet):
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork

        super().__init__()
        self.body = stage_body(resnet)
        widths = [stage_widths(resnet)[s] for s in FPN_FROM]
        self.fpn = FeaturePyramidNetwork(widths, FPN_CHANNELS)
        self.out_channels = FPN_CHANNELS

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        stages = self.body(x)
        return self.fpn(OrderedDict((s, stages[s]) for s in FPN_FROM))


class FCOSDetector(nn.Module):
    """FCOS over a CIFAR ResNet, called on a batch tensor.

    ``forward(x, targets)`` takes images (B, C, H, W) and, in training mode, B target dicts
    (``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) in 1..num_classes - 1) and returns
    torchvision's loss dict (``classification``, ``bbox_regression``, ``bbox_ctrness``); in eval
    mode it returns B dicts of ``boxes``, ``scores``, ``labels``.

    Per-location class logits, which distillation needs, are the output of
    :attr:`class_logits_layer` (``"detector.head.classification_head"``), a
    (B, locations, num_classes) tensor with the locations of every FPN level, finest first, each in
    row-major order; tap it with FeatureTap during any forward (train or eval), or call
    :meth:`class_logits`. The FPN levels are the ModelInfo's ``levels`` (FeatureTap names of the
    (B, 64, h, w) level outputs).
    """

    class_logits_layer = "detector.head.classification_head"

    def __init__(self, resnet: CifarResNet, num_classes: int):
        from torchvision.models.detection import FCOS
        from torchvision.models.detection.anchor_utils import AnchorGenerator
        from torchvision.models.detection.fcos import FCOSHead

        super().__init__()
        backbone = ResNetFPN(resnet)
        anchors = AnchorGenerator(
            sizes=tuple((s,) for s in STRIDES), aspect_ratios=((1.0,),) * len(STRIDES)
        )
        head = FCOSHead(FPN_CHANNELS, 1, num_classes, num_convs=HEAD_CONVS)
        self.detector = FCOS(
            backbone, num_classes, anchor_generator=anchors, head=head, score_thresh=0.05
        )
        in_channels = resnet.conv1.in_channels
        self.detector.transform = _as_is_transform(in_channels)
        stages, preact = stage_layers(resnet, "detector.backbone.body")
        self.kdscope_info = ModelInfo(
            output="detections",
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            preact=preact,
            levels=tuple(f"detector.backbone.fpn.layer_blocks.{i}" for i in range(len(FPN_FROM))),
            logits_layer=self.class_logits_layer,
        )

    def forward(self, x: Tensor, targets: list[dict[str, Tensor]] | None = None):
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
        if self.training and (targets is None or len(targets) != len(x)):
            got = "none" if targets is None else len(targets)
            raise ValueError(f"training needs one target dict per image ({len(x)}), got {got}")
        return self.detector(list(x), targets if self.training else None)

    def class_logits(self, x: Tensor) -> Tensor:
        """The classification head's logits (B, locations, num_classes), without decoding boxes.

        Classes are scored by independent sigmoids (focal loss), so a location's class
        probabilities are ``sigmoid(logits)``, not a softmax.
        """
        features = list(self.detector.backbone(x).values())
        return self.detector.head.classification_head(features)


def _fcos(backbone, num_classes: int, in_channels: int, **kwargs) -> FCOSDetector:
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")
    return FCOSDetector(build_resnet(backbone, in_channels, **kwargs), num_classes)


@register_model("fcos_resnet8", task="detection")
def fcos_resnet8(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet8, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet14", task="detection")
def fcos_resnet14(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet14, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet20", task="detection")
def fcos_resnet20(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet20, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet32", task="detection")
def fcos_resnet32(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet32, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet56", task="detection")
def fcos_resnet56(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet56, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet8x4", task="detection")
def fcos_resnet8x4(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet8x4, num_classes, in_channels, **kwargs)


@register_model("fcos_resnet32x4", task="detection")
def fcos_resnet32x4(num_classes: int, in_channels: int = 3, **kwargs) -> FCOSDetector:
    return _fcos(resnet32x4, num_classes, in_channels, **kwargs)
