"""Model registry and the factory ``create_model(name, num_classes, in_channels)`` (timm-style)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from kdscope.models.info import BuildSpec, describe, set_info
from kdscope.models.tv import create_torchvision_model
from kdscope.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``.

    The returned module carries its :class:`~kdscope.models.info.ModelInfo` as
    ``model.kdscope_info`` (stage outputs, pre-activations, classifier, pooled map: FeatureTap
    names, where ``:in`` means the module's input); ``create_model`` adds how it was built.
    """
    return MODELS.register(name)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, or any torchvision classifier as ``tv:<name>``.

    The model's ModelInfo records how it was built (``spec``), so a checkpoint can rebuild it.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    factory = (
        functools.partial(create_torchvision_model, name[3:])
        if name.startswith("tv:")
        else MODELS.get(name)
    )
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    except TypeError as err:
        if "argument" not in str(err):
            raise
        raise ValueError(f"model {name!r} cannot be built with {kwargs}: {err}") from None
    info = describe(model)
    if not info.stages:
        raise TypeError(f"model {name!r} declares no stages in its ModelInfo")
    set_info(model, info.with_spec(BuildSpec(name, num_classes, in_channels, dict(kwargs))))
    return model


def list_models() -> list[str]:
    """Names of the zoo models (torchvision models are also accepted as ``tv:<name>``)."""
    return MODELS.names()
