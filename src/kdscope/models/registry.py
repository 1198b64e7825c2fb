"""Model registry and the factory ``create_model(name, num_classes, in_channels)`` (timm-style)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from kdscope.models.hf import create_hf_model
from kdscope.models.info import BuildSpec, describe, set_info
from kdscope.models.timm import create_timm_model
from kdscope.models.tv import create_torchvision_model
from kdscope.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


@dataclass(frozen=True)
class Fits:
    """The data a registered model is built for: its task and the kinds of input it reads (the
    bundle's ``task`` and ``inputs``)."""

    task: str = "classification"
    inputs: tuple[str, ...] = ("image",)


MODEL_FITS: dict[str, Fits] = {}

# Names outside the zoo: torchvision, Hugging Face and timm models.
MODEL_PREFIXES = ("tv:", "hf:", "timm:")


def register_model(
    name: str, *, task: str = "classification", inputs: tuple[str, ...] = ("image",)
) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``, for
    data of ``task`` whose examples are one of ``inputs`` (``kdscope models --data`` lists them).

    The returned module carries its :class:`~kdscope.models.info.ModelInfo` as
    ``model.kdscope_info`` (stage outputs, pre-activations, classifier, pooled map: FeatureTap
    names, where ``:in`` means the module's input); ``create_model`` adds how it was built.
    """
    MODEL_FITS[name] = Fits(task, tuple(inputs))
    return MODELS.register(name)


def create_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, any torchvision classifier as ``tv:<name>``, a local Hugging
    Face model as ``hf:<path>`` or any timm model as ``timm:<name>`` (never with weights).

    The model's ModelInfo records how it was built (``spec``), so a checkpoint can rebuild it.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if name.startswith("tv:"):
        factory = functools.partial(create_torchvision_model, name[3:])
    elif name.startswith("hf:"):
        factory = functools.partial(create_hf_model, name[3:])
    elif name.startswith("timm:"):
        factory = functools.partial(create_timm_model, name[5:])
    else:
        factory = MODELS.get(name)
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


def list_models(task: str | None = None, inputs: str | None = None) -> list[str]:
    """Names of the zoo models, those for ``task`` and input kind ``inputs`` when given
    (torchvision models are also accepted as ``tv:<name>``, Hugging Face ones as ``hf:<path>``,
    timm ones as ``timm:<name>``)."""
    return [
        name
        for name in MODELS.names()
        if (task is None or MODEL_FITS[name].task == task)
        and (inputs is None or inputs in MODEL_FITS[name].inputs)
    ]
