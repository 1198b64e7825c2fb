"""Parameter and compute counts of models, for ``kdscope models`` and reports."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdscope.features import FeatureTap
from kdscope.models.info import describe
from kdscope.models.registry import create_model, list_models


def model_summary(
    model_or_name: nn.Module | str,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    example: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Size and cost of one model on a ``1 x in_channels x input_size x input_size`` input, or on
    ``example`` (one example with its batch dimension, e.g. a (1, T) block of token ids).

    Returns a dict with ``name``, ``params`` (all parameters), ``macs`` (multiply-adds of one
    example, what CRD-style tables call FLOPs), ``flops`` (= 2 * macs, torch's FlopCounterMode
    convention) and ``features`` (the shape, without batch, of each of the model's stages). Only
    matrix products and convolutions are counted; norms, activations and pooling are not.
    """
    if isinstance(model_or_name, str):
        name = model_or_name
        model = create_model(name, num_classes, in_channels)
    else:
        model = model_or_name
        spec = describe(model).spec
        name = spec.name if spec else type(model).__name__
    device = next(model.parameters()).device
    if example is None:
        x = torch.zeros(1, in_channels, input_size, input_size, device=device)
    else:
        x = example.to(device)
    was_training = model.training
    model.eval()
    try:
        tap = FeatureTap(model, describe(model).stages, detach=True)
        with torch.no_grad(), tap, FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "macs": flops // 2,
        "flops": flops,
        "features": {layer: list(f.shape[1:]) for layer, f in tap.features.items()},
    }


def zoo_table(
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    *,
    task: str = "classification",
    inputs: str = "image",
    example: torch.Tensor | None = None,
) -> list[dict]:
    """:func:`model_summary` of every zoo model for ``task`` and input kind ``inputs`` (default
    the image classifiers), in name order, on ``example`` when given."""
    names = list_models(task=task, inputs=inputs)
    return [model_summary(n, num_classes, in_channels, input_size, example) for n in names]
