"""Token Grad-CAM and token UniCAM (explain/tokens.py) and the UniCAM core both share."""

from __future__ import annotations

import copy

import pytest
import torch

from kdscope.data.tokens import masked_mean
from kdscope.explain.tokens import token_grad_cam, token_unicam
from kdscope.explain.unicam import unique_gradients
from kdscope.metrics.matrices import u_centered, u_correlation, u_inner
from kdscope.metrics.similarity import pairwise_distances
from kdscope.models import create_model

VOCAB, PAD = 50, 0


def _batch():
    """8 sentences of 2 classes, lengths 3-10 padded to 10."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (8, 10), generator=g)
    for row, length in enumerate([10, 3, 7, 5, 9, 4, 6, 8]):
        ids[row, length:] = PAD
    return ids, torch.tensor([0, 1] * 4)


def _textcnn(seed: int):
    torch.manual_seed(seed)
    return create_model("textcnn", 2, VOCAB, embed_dim=16, filters=8)


def test_token_grad_cam_weights_tokens_by_the_mean_gradient_over_real_tokens():
    model = _textcnn(0).eval()
    ids, _ = _batch()
    maps = token_grad_cam(model, "convs", ids)
    # The same map written out: activations of the layer, gradient of the predicted class's logit.
    acts = {}
    handle = model.convs.register_forward_hook(lambda _m, _i, out: acts.update(a=out))
    logits = model(ids)
    handle.remove()
    a = acts["a"]
    grads = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), a)[0]
    real = (ids != PAD).float()
    weights = (grads * real[..., None]).sum(1) / real.sum(1, keepdim=True)
    cam = ((a * weights[:, None, :]).sum(-1)).relu() * real
    for row in range(len(ids)):
        n = int(real[row].sum())
        c = cam[row, :n]
        expected = (c - c.min()) / (c.max() - c.min()) if c.max() > c.min() else torch.zeros(n)
        torch.testing.assert_close(maps[row, :n], expected.detach(), atol=1e-5, rtol=1e-4)
        assert (maps[row, n:] == 0).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_token_unicam_objectives_are_the_semipartial_dcor_of_pooled_features():
    student, base = _textcnn(0).eval(), _textcnn(1).eval()
    ids, labels = _batch()
    embeddings = torch.randn(2, 5, generator=torch.Generator().manual_seed(3))
    result = token_unicam(student, base, "convs", ids, labels, embeddings)
    assert not result.empty and result.distilled.shape == ids.shape
    with torch.no_grad():
        s = masked_mean(student.convs(student.embedding(ids) * (ids != PAD)[..., None]), ids, PAD)
        b = masked_mean(base.convs(base.embedding(ids) * (ids != PAD)[..., None]), ids, PAD)
    a, c = u_centered(pairwise_distances(s)), u_centered(pairwise_distances(b))
    e = u_centered(pairwise_distances(embeddings[labels].double()))
    unique = a - u_inner(a, c) / u_inner(c, c) * c
    assert result.objective_distilled == pytest.approx(u_correlation(unique, e).item(), abs=1e-6)
    assert (result.distilled[ids == PAD] == 0).all() and (result.residual[ids == PAD] == 0).all()
    swapped = token_unicam(base, student, "convs", ids, labels, embeddings)
    assert swapped.objective_distilled == pytest.approx(result.objective_residual, abs=1e-9)
    torch.testing.assert_close(swapped.distilled, result.residual)


def test_token_unicam_of_an_identical_copy_is_empty():
    student = _textcnn(0).eval()
    ids, labels = _batch()
    result = token_unicam(student, copy.deepcopy(student), "convs", ids, labels, torch.eye(2))
    assert result.empty and result.unique_fraction <= 1e-10
    assert (result.distilled == 0).all() and (result.residual == 0).all()


def test_unique_gradients_swap_with_the_models_and_vanish_for_a_copy():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(12, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, 4, generator=g, dtype=torch.float64, requires_grad=True)
    embeddings = torch.randn(12, 3, generator=g, dtype=torch.float64)
    found = unique_gradients((s, b), (s, b), embeddings)
    back = unique_gradients((b, s), (b, s), embeddings)
    assert found.objectives == pytest.approx(back.objectives[::-1])
    torch.testing.assert_close(found.grads[0], back.grads[1])
    assert 0 < found.unique_fraction < 1
    same = unique_gradients((s, s), (s, s), embeddings)
    assert same.grads is None and same.objectives == (0.0, 0.0)
