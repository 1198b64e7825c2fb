"""Token relevance for sentence classifiers: Grad-CAM and UniCAM per token.

Grad-CAM (Selvaraju et al., ICCV 2017) over a sequence: at a layer with per-token features
a (B, T, D), the weights are the mean over the example's real tokens of d(objective)/da, and a
token's relevance is ReLU(sum_d w_d a_{t,d}) (the 1-D Grad-CAM used for text CNNs, e.g. Gorski et
al. 2020, "Towards Grad-CAM Based Explainability in a Legal Text Processing Pipeline"), min-max
normalised over the real tokens; padding gets 0. UniCAM (Adhane et al., WACV 2025) per token: the
distance matrices of its objective are between examples, each the masked mean of its tokens'
features (as kdscope's CKA and KRS compare sentences, :func:`~kdscope.models.example_features`),
and the gradient of the distilled (residual) objective weights the student's (base's) tokens as
Grad-CAM does. ROAD's perturbed FSS/RS imputes pixels and has no counterpart on token ids, so text
explanations are the maps and their figure only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from kdscope.data.tokens import masked_mean, padding_mask
from kdscope.explain.gradcam import eval_mode, graph_from
from kdscope.explain.unicam import UNIQUE_TOLERANCE, UniCAMResult, check_batch, unique_gradients
from kdscope.features import unwrap


def pad_id_of(model: nn.Module) -> int:
    """The padding id a text model masks (its ``pad_id``; 0, BERT's, when it declares none)."""
    return int(getattr(unwrap(model), "pad_id", 0))


def token_activations(model: nn.Module, layer: str, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and the per-token activations (B, T, D) of ``layer`` as a leaf the logits' graph
    starts from (nothing before the layer is recorded)."""
    with graph_from(model, layer) as root:
        logits = model(ids)
    acts = root.get(layer)
    if acts is None:
        raise RuntimeError(f"layer {layer!r} was not reached by the forward pass")
    if acts.dim() != 3 or tuple(acts.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"token Grad-CAM needs a layer with per-token output (B, T, D) for ids "
            f"{tuple(ids.shape)}; {layer!r} gives {tuple(acts.shape)}. Choose one of the "
            "model's stages."
        )
    return logits, acts


def token_cam(acts: Tensor, grads: Tensor, ids: Tensor, pad_id: int) -> Tensor:
    """Grad-CAM weighting over tokens: (B, T) relevance in [0, 1], 0 at padding."""
    weights = masked_mean(grads.float(), ids, pad_id)
    cam = (acts.float() * weights[:, None, :]).sum(-1).relu()
    mask = padding_mask(ids, pad_id)
    cam = cam.masked_fill(~mask, 0.0)
    low = cam.masked_fill(~mask, float("inf")).amin(1, keepdim=True)
    span = cam.amax(1, keepdim=True) - low
    scaled = torch.where(span > 0, (cam - low) / span.clamp_min(1e-30), 0.0)
    return scaled.masked_fill(~mask, 0.0)


def token_grad_cam(model: nn.Module, layer: str, ids: Tensor, targets: Tensor | None = None):
    """Grad-CAM relevance (B, T) of each token of ``ids`` for ``targets`` (default: the predicted
    class) at ``layer`` of a sentence classifier (eval mode for the call)."""
    with eval_mode(model):
        logits, acts = token_activations(model, layer, ids)
        classes = logits.argmax(1) if targets is None else torch.as_tensor(targets).to(ids.device)
        with torch.enable_grad():
            objective = logits.gather(1, classes.long().view(-1, 1)).sum()
        (grads,) = torch.autograd.grad(objective, acts)
    return token_cam(acts.detach(), grads, ids, pad_id_of(model))


def token_unicam(
    student: nn.Module,
    base: nn.Module,
    layer: str | tuple[str, str],
    ids: Tensor,
    labels: Tensor,
    label_embeddings: Tensor,
    tolerance: float = UNIQUE_TOLERANCE,
) -> UniCAMResult:
    """UniCAM's distilled (student vs base) and residual (base vs student) relevance per token,
    maps (B, T); the batch needs >= 4 sentences of >= 2 classes."""
    s_layer, b_layer = (layer, layer) if isinstance(layer, str) else layer
    labels = torch.as_tensor(labels).long().reshape(-1)
    check_batch(ids, labels, label_embeddings)
    emb = label_embeddings.detach().to(ids.device, torch.float64)[labels.to(ids.device)]
    with eval_mode(student, base):
        s = token_activations(student, s_layer, ids)[1].detach().requires_grad_()
        b = token_activations(base, b_layer, ids)[1].detach().requires_grad_()
    s_pad, b_pad = pad_id_of(student), pad_id_of(base)
    with torch.enable_grad():
        examples = (masked_mean(s, ids, s_pad), masked_mean(b, ids, b_pad))
        found = unique_gradients((s, b), examples, emb, tolerance)
    if found.grads is None:
        zeros = torch.zeros(ids.shape, device=ids.device)
        maps = (zeros, zeros.clone())
    else:
        maps = (
            token_cam(s.detach(), found.grads[0], ids, s_pad),
            token_cam(b.detach(), found.grads[1], ids, b_pad),
        )
    return UniCAMResult(
        distilled=maps[0],
        residual=maps[1],
        labels=labels.cpu(),
        indices=None,
        objective_distilled=found.objectives[0],
        objective_residual=found.objectives[1],
        unique_fraction=found.unique_fraction,
        empty=found.grads is None,
    )
