"""Any torchvision classifier as a kdscope model: ``create_model("tv:resnet18", 10, in_channels)``.

Weights are never downloaded (``weights=None``); the model is built with ``num_classes`` outputs,
its first conv is rebuilt for ``in_channels`` other than 3, and with ``small_input=True`` (the
default) it is adapted to 8-32 pixel images: the ResNet family (resnet*, resnext*, wide_resnet*)
gets the CIFAR stem (3x3 stride-1 conv, no max-pool); other models' non-overlapping pools (VGG's 2x2
max-pools, DenseNet's transitions) round up (``ceil_mode``), which leaves even sizes unchanged and
keeps odd or tiny feature maps from pooling to nothing. Networks built for ImageNet may still shrink
8-pixel inputs to nothing (alexnet, densenet, googlenet, squeezenet, convnext); the zoo models suit
such images.

Stages (the ModelInfo's ``stages``): ``layer1..layer4`` for the ResNet family; for the others, the
children of the model's trunk (``features``, ``trunk_output`` or ``layers``; else the model itself),
pooling layers aside, that come right before each spatial downsampling, plus the trunk's last child,
found by one forward pass of a 64x64 input with hooks. Swin models' features are channels-last
(B, H, W, C).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdscope.models.info import ModelInfo, set_info
from kdscope.registry import UnknownNameError

_RESNET_FAMILY = ("resnet", "resnext", "wide_resnet")
_TRUNKS = ("features", "trunk_output", "layers")
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PROBE_SIZE = 64  # large enough that every stride-2 step of a 32x-downsampling network is visible


def torchvision_names() -> list[str]:
    """Names of torchvision's image classifiers (those ``tv:<name>`` accepts)."""
    import torchvision  # here, not at module level: it takes seconds to import

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_torchvision_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    small_input: bool = True,
    stages: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build torchvision classifier ``name`` untrained, for ``num_classes`` and ``in_channels``.

    Args:
        small_input: adapt the stem or pooling to small images (see the module docstring).
        stages: override the discovered stage outputs (needed for models whose stages cannot
            be found by a 64x64 forward pass, such as ViTs, which only accept their ``image_size``).
        **kwargs: passed to the torchvision constructor (``dropout``, ``width_mult``, ...).
    """
    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"Unknown torchvision model {name!r}.{hint} Accepted: {', '.join(names)}."
        )
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    resnet_like = name.startswith(_RESNET_FAMILY)
    if small_input and resnet_like:
        model.conv1 = _conv(in_channels, model.conv1.out_channels, 3, 1, 1)
        model.maxpool = nn.Identity()
    else:
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
        if small_input:
            for m in model.modules():
                # Only for non-overlapping pools: rounding up an overlapping 3x3/2 pool can leave a
                # later one a map smaller than its kernel.
                if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and m.kernel_size == m.stride:
                    m.ceil_mode = True

    if stages is not None:
        stages = tuple(stages)
    elif resnet_like:
        stages = ("layer1", "layer2", "layer3", "layer4")
    else:
        stages = tuple(_stage_outputs(model, name, in_channels))
    pooled = "avgpool:in" if isinstance(getattr(model, "avgpool", None), nn.Module) else stages[-1]
    # torchvision blocks reuse one inplace ReLU, so no module input holds a pre-activation.
    return set_info(
        model,
        ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=stages,
            classifier=_last_linear(model, num_classes),
            pooled_map=pooled,
        ),
    )


def _conv(in_channels: int, out_channels: int, kernel, stride, padding, **kw) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, **kw)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    name, old = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    new = _conv(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
    )  # fmt: skip
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def _stage_outputs(model: nn.Module, name: str, in_channels: int) -> list[str]:
    trunk_name = next(
        (t for t in _TRUNKS if isinstance(getattr(model, t, None), nn.Sequential)), ""
    )
    trunk = model.get_submodule(trunk_name)
    prefix = f"{trunk_name}." if trunk_name else ""
    sizes: dict[str, tuple[int, ...]] = {}

    def record(child_name: str):
        def hook(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sizes[child_name] = tuple(output.shape[-2:])

        return hook

    handles = [
        child.register_forward_hook(record(prefix + n))
        for n, child in trunk.named_children()
        if not isinstance(child, _POOLS)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, _PROBE_SIZE, _PROBE_SIZE))
    except Exception as err:
        raise ValueError(
            f"Could not find the stages of tv:{name} with a {_PROBE_SIZE}x{_PROBE_SIZE} forward "
            f"pass ({err}); pass stages=[...] explicitly."
        ) from err
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    seq = list(sizes.items())  # hooks fire in execution order
    if not seq:
        raise ValueError(
            f"tv:{name} has no child of {trunk_name or 'the model'} with a 4-D (image) output; "
            "pass stages=[...] explicitly."
        )
    return [n for (n, s), (_, nxt) in zip(seq, seq[1:], strict=False) if _smaller(nxt, s)] + [
        seq[-1][0]
    ]


def _smaller(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return any(x < y for x, y in zip(a, b, strict=True))


def _last_linear(model: nn.Module, num_classes: int) -> str | None:
    heads = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == num_classes]  # fmt: skip
    # SqueezeNet classifies with a 1x1 conv and has no linear head.
    return heads[-1] if heads else None
