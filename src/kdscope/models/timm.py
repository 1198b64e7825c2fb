"""Any timm model as a kdscope model: ``create_model("timm:resnet10t", 10, in_channels)``.

Built with ``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``: weights are
never downloaded (train the model, or load a checkpoint). The :class:`~kdscope.models.ModelInfo`
comes from timm's own description of the network: ``feature_info`` gives the stages (its modules,
shallow to deep, the maps ``features_only=True`` would return), their channels and reductions
(input-to-feature strides); ``get_classifier()`` gives the classifier. Keyword arguments go to the
timm constructor (a tiny ViT for 8-pixel images: ``img_size=8, patch_size=2, embed_dim=32,
depth=2, num_heads=2``); ``stages=[...]`` overrides the stages. Needs the optional ``timm`` extra.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from torch import nn

from kdscope.models.info import ModelInfo, set_info
from kdscope.registry import UnknownNameError


def _timm():
    try:
        import timm  # seconds to import: only when a timm: model is asked for
    except ImportError:
        raise ImportError(
            "timm:<name> models need the timm package: pip install 'kdscope[timm]'"
        ) from None
    return timm


def create_timm_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    stages: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build timm model ``name`` untrained, for ``num_classes`` and ``in_channels``."""
    timm = _timm()
    if kwargs.get("pretrained"):
        raise ValueError(
            f"timm:{name} is built without weights (pretrained=False: nothing is downloaded); "
            "load trained weights with student.checkpoint instead"
        )
    kwargs.pop("pretrained", None)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"Unknown timm model {name!r}.{hint} timm.list_models() lists the accepted names."
        )
    model = timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
    )
    features = list(getattr(model, "feature_info", None) or [])
    if stages is None:
        if not features:
            raise ValueError(f"timm:{name} has no feature_info; pass stages=[...] explicitly")
        stages = [f["module"] for f in features]
        channels = tuple(int(f["num_chs"]) for f in features)
        reductions = tuple(int(f["reduction"]) for f in features)
    else:
        channels = reductions = ()
    modules = dict(model.named_modules())
    missing = [s for s in stages if s not in modules]
    if missing:
        raise ValueError(
            f"timm:{name}: stages {missing} are not modules of the model; pass stages=[...] "
            "naming modules of model.named_modules()"
        )
    names = {id(m): n for n, m in modules.items()}
    head = model.get_classifier()
    classifier = names.get(id(head)) if isinstance(head, nn.Linear) else None
    pool = getattr(model, "global_pool", None)
    return set_info(
        model,
        ModelInfo(
            num_classes=num_classes,
            in_channels=in_channels,
            stages=tuple(stages),
            channels=channels,
            reductions=reductions,
            classifier=classifier,
            pooled_map="global_pool:in" if isinstance(pool, nn.Module) else stages[-1],
        ),
    )
