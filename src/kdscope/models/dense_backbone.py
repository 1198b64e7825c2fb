"""The backbone the zoo's dense models share: a CIFAR-style ResNet's stem and three stages
(strides 1, 2 and 4), their outputs returned by name through torchvision's
``IntermediateLayerGetter``, and the stage names and widths their ModelInfo declares."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from kdscope.models.resnet import CifarResNet

STAGES = ("layer1", "layer2", "layer3")


def build_resnet(build: Callable[..., CifarResNet], in_channels: int, **kwargs) -> CifarResNet:
    """The ResNet a dense model is built on; its pooling and classifier are dropped by
    :func:`stage_body`, so the classifier's size does not matter."""
    return build(num_classes=2, in_channels=in_channels, **kwargs)


def stage_body(resnet: CifarResNet) -> nn.Module:
    """The ResNet up to its last stage, returning ``{stage: output}`` for :data:`STAGES`."""
    # torchvision is imported where models are built: it takes seconds to import.
    from torchvision.models._utils import IntermediateLayerGetter

    return IntermediateLayerGetter(resnet, {s: s for s in STAGES})


def stage_widths(resnet: CifarResNet) -> dict[str, int]:
    """Output channels of each stage."""
    return {s: resnet.get_submodule(s)[-1].conv2.out_channels for s in STAGES}


def stage_layers(resnet: CifarResNet, prefix: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """FeatureTap names of the stage outputs and of their pre-activation features (the input of
    each stage's last activation), for a body at ``prefix`` in the dense model."""
    stages = tuple(f"{prefix}.{s}" for s in STAGES)
    blocks = len(resnet.layer1)
    return stages, tuple(f"{s}.{blocks - 1}.act:in" for s in stages)
