"""The one model contract: :class:`ModelInfo`, a frozen record of what kdscope needs to know about a
model (its stages, heads and output layout), and :func:`describe`, the one function that reads it.

Zoo models carry their record as ``model.kdscope_info`` (set when they are built); any other module
is described from its structure (its last ``nn.Linear`` is the classifier; it declares no stages,
so methods and metrics that need stage features ask for layer names). This is what timm's
``feature_info`` plus ``get_classifier()`` give, as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from torch import nn

from kdscope.features import unwrap

OutputKind = Literal["classes", "tokens", "pixels", "detections"]
# Where the class scores lie in each output layout: (B, C), (B, T, V), (B, C, H, W).
CLASS_DIM = {"classes": 1, "tokens": -1, "pixels": 1}


@dataclass(frozen=True)
class BuildSpec:
    """How to rebuild a model with :func:`~kdscope.models.create_model` (what checkpoints store)."""

    name: str
    num_classes: int
    in_channels: int
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "kwargs": dict(self.kwargs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildSpec:
        return cls(d["name"], d["num_classes"], d["in_channels"], dict(d.get("kwargs") or {}))


@dataclass(frozen=True)
class ModelInfo:
    """What a model is to kdscope. Layer names are FeatureTap names (``model.get_submodule``
    paths; a ``:in`` suffix means the module's input).

    Attributes:
        output: the layout of the model's output: ``"classes"`` (B, C) logits, ``"tokens"``
            (B, T, V) next-token logits, ``"pixels"`` (B, C, H, W) per-pixel logits, or
            ``"detections"`` (a detector's own losses and boxes).
        num_classes: classes scored (the vocabulary size for ``"tokens"``); None if unknown.
        in_channels: input channels (or the input's feature size); None if unknown.
        stages: stage outputs, shallow to deep (the analogue of ResNet's conv2_x..conv5_x).
        channels, reductions: the stages' channel counts and strides from the input, where the
            model declares them (timm's ``feature_info``); empty otherwise.
        preact: pre-activation features at those stages (OFD), empty where there are none.
        classifier: the final ``nn.Linear`` producing the class scores, if there is one (a
            segmenter's: the 1x1 ``nn.Conv2d`` that scores each pixel of its last stage).
        pooled_map: the feature map the classifier sees through global pooling (a segmenter's:
            the map its classifier scores).
        levels: a detector's feature-pyramid levels (the maps its heads read), fine to coarse.
        logits_layer: where the class logits are when the output is not them (a detector's
            classification head: (B, locations, C)).
        spec: how the model was built, for checkpoints; None for users' own models.
    """

    output: OutputKind = "classes"
    num_classes: int | None = None
    in_channels: int | None = None
    stages: tuple[str, ...] = ()
    channels: tuple[int, ...] = ()
    reductions: tuple[int, ...] = ()
    preact: tuple[str, ...] = ()
    classifier: str | None = None
    pooled_map: str | None = None
    levels: tuple[str, ...] = ()
    logits_layer: str | None = None
    spec: BuildSpec | None = None

    @property
    def penultimate(self) -> str | None:
        """The classifier's input (the pooled embedding), ``"<classifier>:in"``."""
        return f"{self.classifier}:in" if self.classifier else None

    @property
    def class_dim(self) -> int:
        """The dimension of the output that holds the class scores."""
        return CLASS_DIM.get(self.output, 1)

    def with_spec(self, spec: BuildSpec) -> ModelInfo:
        return replace(self, spec=spec, num_classes=spec.num_classes, in_channels=spec.in_channels)


def describe(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of ``model`` (DDP and ``torch.compile`` wrappers are looked
    through).

    A model built by kdscope carries its record. Any other module is described from its structure,
    and so are the fields a record set with :func:`set_info` leaves empty: its last ``nn.Linear``
    is the classifier and sets ``num_classes``, its first convolution or linear layer sets
    ``in_channels``; stages are only what the record declares.
    """
    model = unwrap(model)
    info = model.__dict__.get("kdscope_info")
    info = info if isinstance(info, ModelInfo) else ModelInfo()
    if info.num_classes is not None and info.in_channels is not None:
        return info
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    first = next(
        (m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))), None
    )
    in_channels = None
    if isinstance(first, (nn.Conv1d, nn.Conv2d)):
        in_channels = first.in_channels
    elif isinstance(first, nn.Linear):
        in_channels = first.in_features
    classifier = info.classifier or (linears[-1][0] if linears else None)
    head = model.get_submodule(classifier) if classifier else None
    return replace(
        info,
        num_classes=info.num_classes
        or (head.out_features if isinstance(head, nn.Linear) else None),
        in_channels=info.in_channels or in_channels,
        classifier=classifier,
    )


def set_info(model: nn.Module, info: ModelInfo) -> nn.Module:
    """Attach ``info`` to ``model`` (what :func:`describe` returns from then on)."""
    model.kdscope_info = info
    return model


def classifier_of(model: nn.Module, pixelwise: bool = False) -> nn.Linear | nn.Conv2d:
    """The model's final linear layer, as its :class:`ModelInfo` names it; with ``pixelwise``, a
    segmenter's 1x1 convolution is accepted too (a linear classifier applied at every pixel)."""
    info = describe(model)
    name = type(unwrap(model)).__name__
    if info.classifier is None:
        raise ValueError(f"{name} has no linear classifier; methods that reuse it need one")
    head = unwrap(model).get_submodule(info.classifier)
    if pixelwise and isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1):
        return head
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"{name}'s classifier {info.classifier!r} is a {type(head).__name__}, not an nn.Linear"
        )
    return head
