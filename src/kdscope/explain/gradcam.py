"""Grad-CAM (Selvaraju et al., ICCV 2017), batched, for any spatial layer of any model.

map = ReLU(sum_c w_c a_c) with w_c the spatial mean of d(objective)/d(a_c), upsampled bilinearly to
the input size and min-max normalised per image. Equal to ``pytorch_grad_cam.GradCAM`` for a single
layer. The forward pass runs without autograd up to the layer and records a graph only from there
on (rooted at a leaf copy of the layer's output), and the gradient is taken with
``torch.autograd.grad`` with respect to that leaf: a Grad-CAM costs about one forward pass, the
backward stops at the layer, and parameters' ``.grad`` are left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.features import FeatureTap, resolve_layer

Objective = Callable[[Tensor, Tensor], Tensor]
"""``objective(logits, activations) -> scalar``: what Grad-CAM differentiates."""

Targets = Tensor | Sequence[int] | Objective | None


def grad_cam(model: nn.Module, layer: str, inputs: Tensor, targets: Targets = None) -> Tensor:
    """Grad-CAM maps of ``model`` at ``layer`` for a batch.

    Args:
        model: any classifier; it is put in eval mode for the call and restored afterwards.
        layer: name of a module whose output is (B, C, h, w) (``:in`` for its input, as in
            FeatureTap).
        inputs: (B, C_in, H, W) normalised images.
        targets: class per image (tensor or sequence of ints), ``None`` for the predicted class,
            or an ``Objective`` (a custom scalar, e.g. UniCAM's).

    Returns:
        (B, H, W) float32 maps in [0, 1]; an image whose weighted activations are nowhere positive
        gets an all-zero map.
    """
    with eval_mode(model):
        logits, acts = layer_activations(model, layer, inputs)
        with torch.enable_grad():
            objective = _objective(targets, logits, acts)
        (grads,) = torch.autograd.grad(objective, acts)
    return cam_from(acts.detach(), grads, inputs.shape[-2:])


def cam_from(acts: Tensor, grads: Tensor, size: Sequence[int]) -> Tensor:
    """Grad-CAM weighting: ReLU(sum_c mean_hw(g_c) a_c), bilinear upsampling, per-image min-max."""
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = (weights * acts).sum(1, keepdim=True).relu()
    cam = F.interpolate(cam.float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return minmax(cam)


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max normalisation to [0, 1]; constant maps become all-zero."""
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), 0.0)
    return scaled.reshape_as(maps)


def layer_activations(model: nn.Module, layer: str, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the (B, C, h, w) activations of ``layer``, a leaf the logits' graph starts from.

    Nothing before the layer is recorded (whatever the grad mode or the parameters'
    ``requires_grad``), so only the activations can be differentiated; compute an objective from
    the logits with grad enabled.
    """
    with graph_from(model, layer) as root:
        logits = model(inputs)
    acts = root.get(layer)
    if acts is None:
        raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
    _check_spatial(acts, layer)
    return logits, acts


@contextmanager
def graph_from(model: nn.Module, layer: str) -> Iterator[dict[str, Tensor]]:
    """Run forward passes in the block without autograd up to ``layer``, with it from there on.

    A hook replaces the layer's output (its input for ``name:in``) by a copy of a fresh leaf that
    requires grad and turns grad mode on for the rest of the pass; the leaf lands in the yielded
    dict. The copy keeps the leaf intact when the next module is an in-place activation.
    """
    take_input = layer.endswith(":in")
    module = resolve_layer(model, layer.removesuffix(":in"))
    found: dict[str, Tensor] = {}

    def root(value: Any) -> Any:
        tensor = value[0] if isinstance(value, (tuple, list)) else value
        torch.set_grad_enabled(True)  # torch.no_grad() below restores the caller's mode
        found[layer] = leaf = tensor.detach().requires_grad_()
        if isinstance(value, (tuple, list)):
            return type(value)([leaf.clone(), *value[1:]])
        return leaf.clone()

    if take_input:
        handle = module.register_forward_pre_hook(lambda _module, inputs: root(inputs))
    else:
        handle = module.register_forward_hook(lambda _module, _inputs, output: root(output))
    try:
        with torch.no_grad():
            yield found
    finally:
        handle.remove()


class _LayerReached(Exception):
    """Raised by a hook once the wanted layer has run: the rest of the forward is not needed."""


@torch.no_grad()
def layer_features(model: nn.Module, layer: str, inputs: Tensor) -> Tensor:
    """Detached (B, C, h, w) activations of ``layer``, the model in eval mode.

    The forward pass stops at the layer (a hook raises once its output is captured).
    """

    def stop(*_) -> None:
        raise _LayerReached

    with eval_mode(model), FeatureTap(model, [layer], detach=True) as tap:
        handle = resolve_layer(model, layer.removesuffix(":in")).register_forward_hook(stop)
        try:
            model(inputs)
        except _LayerReached:
            pass
        finally:
            handle.remove()
    return _spatial(tap, layer)


def _spatial(tap: FeatureTap, layer: str) -> Tensor:
    acts = tap.features.get(layer)
    if acts is None:
        raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
    _check_spatial(acts, layer)
    return acts


def _check_spatial(acts: Tensor, layer: str) -> None:
    if acts.ndim != 4:
        raise ValueError(
            f"Grad-CAM needs a spatial layer with (B, C, h, w) output; {layer!r} gives shape "
            f"{tuple(acts.shape)}. Choose a convolutional stage (one of the ModelInfo stages)."
        )


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode (BatchNorm statistics untouched), then restore every submodule."""
    modes = [[(m, m.training) for m in model.modules()] for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for saved in modes:
            for module, training in saved:
                module.training = training


def _objective(targets: Targets, logits: Tensor, acts: Tensor) -> Tensor:
    if callable(targets):
        value = targets(logits, acts)
        if value.ndim != 0:
            shape = tuple(value.shape)
            raise ValueError(f"a Grad-CAM objective must return a scalar, got shape {shape}")
        return value
    if targets is None:
        classes = logits.argmax(1)
    else:
        classes = torch.as_tensor(targets, device=logits.device).long().reshape(-1)
        if classes.numel() != logits.shape[0]:
            raise ValueError(f"got {classes.numel()} targets for a batch of {logits.shape[0]}")
        if (classes < 0).any() or (classes >= logits.shape[1]).any():
            raise ValueError(
                f"targets must be class indices in [0, {logits.shape[1]}), got {classes.tolist()}"
            )
    return logits.gather(1, classes[:, None]).sum()
