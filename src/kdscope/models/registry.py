"""Model registry and the factory ``create_model(name, num_classes, in_channels)`` (timm-style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kdscope.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    The returned module must have a ``feature_layers`` attribute: its stage outputs, in order.
    """
    return MODELS.register(name)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, or any torchvision classifier as ``tv:<name>``.

    The model records how it was built in ``model.kdscope_spec`` so a checkpoint can rebuild it.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name.startswith("tv:"):
        from kdscope.models.tv import create_torchvision_model

        model = create_torchvision_model(name[3:], num_classes, in_channels, **kwargs)
    else:
        model = MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not getattr(model, "feature_layers", None):
        raise TypeError(f"model {name!r} does not declare feature_layers")
    model.kdscope_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "kwargs": dict(kwargs),
    }
    return model


def list_models() -> list[str]:
    return MODELS.names()
