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

    The returned module declares, as attributes, names valid for ``model.get_submodule`` (FeatureTap
    names, where ``:in`` means the module's input):

    - ``feature_layers``: its stage outputs, in order (required);
    - ``preact_layers``: the pre-activation features at those stages, ``[]`` where there are none;
    - ``classifier_layer``: the final ``nn.Linear`` (``None`` if the model has none).
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
    """Names of the zoo models (torchvision models are also accepted as ``tv:<name>``)."""
    return MODELS.names()


def get_classifier(model: nn.Module) -> nn.Linear:
    """The final linear layer of a kdscope model (named by its ``classifier_layer``)."""
    name = getattr(model, "classifier_layer", None)
    if name is None:
        raise ValueError(f"{type(model).__name__} declares no linear classifier (classifier_layer)")
    layer = model.get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"classifier_layer {name!r} is a {type(layer).__name__}, not nn.Linear")
    return layer
