"""Relation-based methods: rkd, sp, pkt, gld, gkd (relation.py) and crd, crcd (contrastive.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdscope.methods import Outputs, create_method
from kdscope.methods.contrastive import nce_loss, relation_cosines
from kdscope.methods.graph import attach, top_singular_vectors
from kdscope.methods.relation import rkd_angle, rkd_distance
from kdscope.models import create_model
from method_harness import Harness

C, N_TRAIN = 10, 50


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, C, (8,), generator=g)
    return x, y, torch.randperm(N_TRAIN, generator=g)[:8]


def _pair():
    torch.manual_seed(0)
    return create_model("resnet8", C, 1), create_model("resnet14", C, 1)


def _twins():
    """A student identical to its teacher (eval-mode BN on both): identical features."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", C, 1)
    return copy.deepcopy(teacher).eval(), teacher


def _harness(name, batch, student=None, teacher=None, **kwargs):
    if student is None:
        student, teacher = _pair()
    method = create_method(name, **kwargs)
    return Harness(method, student, teacher, batch[0], C, num_train=N_TRAIN), method, student


def _vec_outputs(s: torch.Tensor, t: torch.Tensor) -> Outputs:
    return Outputs(
        torch.zeros(len(s), C), torch.zeros(len(s)), student_features=[s], teacher_features=[t]
    )


@pytest.mark.parametrize("name", ["rkd", "sp", "pkt", "gld", "gkd", "crd", "crcd"])
def test_finite_and_gradients_reach_the_student_and_the_adapters(name, batch):
    h, method, student = _harness(name, batch)
    x, y, idx = batch
    terms, out = h.step(x, y, idx)
    loss = sum(terms.values())
    assert torch.isfinite(loss) and loss.item() > 0
    for f in out.student_features:
        f.retain_grad()
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in out.student_features)
    for p in method.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_rkd_is_invariant_to_feature_scale_and_zero_for_identical_embeddings():
    m = create_method("rkd")
    s, t = torch.randn(10, 7), torch.randn(10, 7)
    base = m(_vec_outputs(s, t))
    scaled = m(_vec_outputs(4.0 * s, t))
    for k in base:
        assert scaled[k].item() == pytest.approx(base[k].item(), rel=1e-5)
    assert all(v.item() == pytest.approx(0.0, abs=1e-7) for v in m(_vec_outputs(t, t)).values())


def test_rkd_potentials_against_brute_force():
    e = torch.randn(5, 3, dtype=torch.float64)
    d = torch.cdist(e, e)
    assert torch.allclose(rkd_distance(e), d / d[d > 0].mean(), atol=1e-6)
    i, j, k = 1, 3, 4
    u, v = e[j] - e[i], e[k] - e[i]
    cos = (u @ v) / (u.norm() * v.norm())
    assert rkd_angle(e).view(5, 5, 5)[i, j, k].item() == pytest.approx(cos.item(), rel=1e-9)


def test_sp_is_invariant_to_feature_scale_and_matches_its_formula():
    m = create_method("sp")
    s, t = torch.randn(6, 4, 3, 3), torch.randn(6, 8, 2, 2)
    loss = m(_vec_outputs(s, t))["sp"]
    assert m(_vec_outputs(0.1 * s, t))["sp"].item() == pytest.approx(loss.item(), rel=1e-5)
    gs = F.normalize(s.flatten(1) @ s.flatten(1).T, dim=1)
    gt = F.normalize(t.flatten(1) @ t.flatten(1).T, dim=1)
    assert loss.item() == pytest.approx(3000 * ((gt - gs) ** 2).sum().item() / 36, rel=1e-5)
    assert m(_vec_outputs(t, t))["sp"].item() == pytest.approx(0.0, abs=1e-6)


def test_pkt_is_zero_for_identical_features_and_positive_otherwise():
    m = create_method("pkt", beta=1.0)
    t = torch.rand(9, 5)
    assert m(_vec_outputs(t, t))["pkt"].item() == pytest.approx(0.0, abs=1e-6)
    assert m(_vec_outputs(2.5 * t, t))["pkt"].item() == pytest.approx(0.0, abs=1e-6)
    assert m(_vec_outputs(torch.rand(9, 5), t))["pkt"].item() > 0


@pytest.mark.parametrize("name", ["gld", "gkd", "rkd", "sp", "pkt"])
def test_zero_when_the_student_is_the_teacher(name, batch):
    student, teacher = _twins()
    h, _, _ = _harness(name, batch, student, teacher)
    terms, _ = h.step(*batch)
    transfer = {k: v for k, v in terms.items() if k != "gkd_mha"}
    assert all(v.item() == pytest.approx(0.0, abs=1e-5) for v in transfer.values()), transfer


def test_gld_uses_the_models_own_classifiers_without_owning_them(batch):
    h, method, student = _harness("gld", batch)
    assert method.student_layers == ["avgpool:in"]
    assert not list(method.parameters()) and not method.state_dict()
    terms, _ = h.step(*batch)
    sum(terms.values()).backward()
    assert student.classifier.weight.grad.abs().sum() > 0
    assert set(terms) == {"gld_global", "gld_local", "gld_relation"}
    assert method.ce_weight == pytest.approx(0.3)


def test_gld_rejects_a_map_the_classifier_does_not_pool(batch):
    with pytest.raises(ValueError, match="classifier takes 64 features"):
        _harness("gld", batch, student_layers=["layer2"], teacher_layers=["layer3"])


def test_top_singular_vector_and_its_reattached_gradient():
    f = torch.randn(3, 4, 5, 5)
    v = top_singular_vectors(f, 2)
    ref = torch.linalg.svd(f.flatten(2).transpose(1, 2), full_matrices=False).Vh.transpose(1, 2)[
        ..., :2
    ]
    assert torch.allclose((v * ref).sum(1).abs(), torch.ones(3, 2), atol=1e-4)
    g = f.clone().requires_grad_()
    w = attach(g, v[..., 0])
    assert torch.allclose(w.abs(), v[..., 0].abs(), atol=1e-4)
    w.sum().backward()
    assert torch.isfinite(g.grad).all() and g.grad.abs().sum() > 0


def test_gkd_trains_its_attention_on_the_teacher_only(batch):
    h, method, _ = _harness("gkd", batch)
    terms, _ = h.step(*batch)
    terms["gkd"].backward(retain_graph=True)
    assert all(p.grad is None for p in method.attention.parameters())
    terms["gkd_mha"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.attention.parameters())


def test_nce_loss_reference_value():
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.01]])
    n = 100
    k, m_pn = 2, 2 / 100
    ref = 0.0
    for row in scores.tolist():
        ref -= torch.log(torch.tensor(row[0] / (row[0] + m_pn + 1e-7)))
        ref -= sum(torch.log(torch.tensor(m_pn / (x + m_pn + 1e-7))) for x in row[1:])
    assert nce_loss(scores, n).item() == pytest.approx(ref.item() / 2, rel=1e-6)
    valid = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    masked = nce_loss(scores, n, valid) - nce_loss(scores, n)
    assert masked.item() == pytest.approx(
        torch.log(torch.tensor(m_pn / (0.2 + m_pn + 1e-7))).item() / 2, rel=1e-5
    )
    assert k == scores.shape[1] - 1


def test_crd_banks_take_a_momentum_step_at_the_batch_indices_only(batch):
    h, method, _ = _harness("crd", batch)
    assert method.k == N_TRAIN - 1 and method.memory_s.shape == (N_TRAIN, 128)
    before_s, before_t = method.memory_s.clone(), method.memory_t.clone()
    x, y, idx = batch
    _, out = h.step(x, y, idx)
    with torch.no_grad():
        v_s, v_t = method.embeddings(out)
    expected = F.normalize(0.5 * before_s[idx] + 0.5 * v_s, dim=1)
    assert torch.allclose(method.memory_s[idx], expected, atol=1e-5)
    assert torch.allclose(
        method.memory_t[idx], F.normalize(0.5 * before_t[idx] + 0.5 * v_t, dim=1), atol=1e-5
    )
    rest = torch.ones(N_TRAIN, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(method.memory_s[rest], before_s[rest])
    z = method.z_s.item()
    assert z > 0
    h.step(x, y, idx)
    assert method.z_s.item() == z  # Z is fixed after the first step
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(method.state_dict())


def test_relation_cosines_against_explicit_differences():
    g = torch.Generator().manual_seed(3)
    v, a, c = (F.normalize(torch.randn(n, 6, generator=g), dim=1) for n in (4, 4, 5))
    got = relation_cosines(v, a, c)
    explicit = F.cosine_similarity(
        c.view(1, 1, 5, 6) - a.view(1, 4, 1, 6), (v.view(4, 1, 1, 6) - a.view(1, 4, 1, 6)), dim=-1
    )
    assert torch.allclose(got, explicit, atol=1e-5)
    pos = relation_cosines(v, a)
    explicit_pos = F.cosine_similarity(
        a.view(4, 1, 6) - a.view(1, 4, 6), v.view(4, 1, 6) - a.view(1, 4, 6), dim=-1
    )
    off = ~torch.eye(4, dtype=torch.bool)
    assert torch.allclose(pos[off], explicit_pos[off], atol=1e-5)


def test_crcd_updates_its_banks_and_caps_k(batch):
    h, method, _ = _harness("crcd", batch, nce_k=20)
    assert method.k == 20
    before = method.memory_t.clone()
    h.step(*batch)
    idx = batch[2]
    assert not torch.allclose(method.memory_t[idx], before[idx])
    assert torch.allclose(method.memory_t[idx].norm(dim=1), torch.ones(len(idx)), atol=1e-5)


def test_contrastive_methods_need_dataset_indices():
    assert create_method("crd").needs.indices and create_method("crcd").needs.indices


def test_penultimate_relation_methods_default_to_the_classifier_input(batch):
    for name in ("rkd", "pkt", "crd", "crcd"):
        _, method, _ = _harness(name, batch)
        assert method.student_layers == ["classifier:in"] == method.teacher_layers


def test_sp_and_gkd_layers(batch):
    assert _harness("sp", batch)[1].student_layers == ["layer3"]
    assert _harness("gkd", batch)[1].teacher_layers == ["layer1", "layer2", "layer3"]
    with pytest.raises(ValueError, match="needs >= 2 layer pairs"):
        _harness("gkd", batch, student_layers=["layer3"], teacher_layers=["layer3"])


def test_gkd_projects_students_of_other_widths(batch):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", C, 1), create_model("resnet8x4", C, 1)
    h, method, _ = _harness("gkd", batch, student, teacher)
    assert isinstance(method.projectors[0], nn.Conv2d)
    terms, _ = h.step(*batch)
    assert torch.isfinite(sum(terms.values()))
