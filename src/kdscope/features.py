"""FeatureTap: the one mechanism that captures intermediate features (forward hooks on named
modules).

Used by feature and relation losses, by the metrics' Evaluator and by explanations, so that no model
is ever rewritten to return its features.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class UnknownLayerError(ValueError):
    """A layer name that is not a submodule of the model; the message lists the closest names."""


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return ``model.get_submodule(name)`` or raise :class:`UnknownLayerError` with suggestions."""
    target = unwrap(model)
    try:
        return target.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in target.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
        shown = close or names[:10]
        raise UnknownLayerError(
            f"Layer {name!r} is not a module of {type(target).__name__}. "
            f"Closest module names: {', '.join(shown)}."
        ) from None


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and torch.compile wrappers (layer names refer to it)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


class FeatureTap:
    """Capture the outputs of named modules during forward passes.

    >>> with FeatureTap(model, ["layer1", "layer3"]) as tap:
    ...     logits = model(x)
    >>> tap.features["layer3"].shape

    Args:
        model: the network to observe.
        layers: submodule names (as in ``model.named_modules()``). A name ending in ``:in``
            captures the module's input instead of its output (pre-activation features:
            ``"layer3.0.act:in"``).
        detach: store ``output.detach()`` (for metrics) instead of the graph-carrying tensor
            (for losses).
        keep_grad: call ``retain_grad()`` on captured tensors so ``tap.features[name].grad`` is
            filled by a later backward (Grad-CAM); implies ``detach=False``.

    The tap may be entered many times; each forward overwrites the stored features. Tuple
    outputs keep their first element. A captured tensor shares storage with the module's output:
    if the next module is an in-place activation, name that module to get post-activation values.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        detach: bool = False,
        keep_grad: bool = False,
    ):
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        self.detach = detach and not keep_grad
        self.keep_grad = keep_grad
        self.features: dict[str, Tensor] = {}
        self._modules = {
            name: resolve_layer(model, name.removesuffix(":in")) for name in self.layers
        }
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        take_input = name.endswith(":in")

        def hook(_module: nn.Module, inputs: tuple, output) -> None:
            out = inputs if take_input else output
            out = out[0] if isinstance(out, (tuple, list)) else out
            if self.detach:
                out = out.detach()
            elif self.keep_grad and out.requires_grad:
                out.retain_grad()
            self.features[name] = out

        return hook

    def __enter__(self) -> FeatureTap:
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __getitem__(self, name: str) -> Tensor:
        return self.features[name]

    def ordered(self) -> list[Tensor]:
        """Captured features in the order the layers were given."""
        return [self.features[name] for name in self.layers]


@torch.no_grad()
def layer_shapes(model: nn.Module | None, layers: Sequence[str], x: Tensor) -> dict[str, tuple]:
    """Output shapes of ``layers`` for input ``x`` (one eval-mode forward; the mode is restored)."""
    if model is None or not layers:
        return {}
    was_training = model.training
    model.eval()
    with FeatureTap(model, layers, detach=True) as tap:
        model(x)
    model.train(was_training)
    return {name: tuple(t.shape) for name, t in tap.features.items()}


def pair_layers(
    student_layers: Sequence[str], teacher_layers: Sequence[str]
) -> list[tuple[str, str]]:
    """Pair student and teacher layers by relative depth.

    With equal counts layers pair in order. Otherwise the model with fewer layers keeps all of
    them and each is matched to the layer of the other model at the same relative depth, so the
    last layers are always paired (resnet56's three stages against a two-stage student:
    (s1, t2), (s2, t3)).
    """
    s, t = list(student_layers), list(teacher_layers)
    if not s or not t:
        raise ValueError("pair_layers needs at least one student and one teacher layer")
    if len(s) <= len(t):
        return [(s[i], t[_at_depth(i, len(s), len(t))]) for i in range(len(s))]
    return [(s[_at_depth(j, len(t), len(s))], t[j]) for j in range(len(t))]


def _at_depth(i: int, few: int, many: int) -> int:
    return round((i + 1) * many / few) - 1
