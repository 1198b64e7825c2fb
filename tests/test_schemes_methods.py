"""Schemes that are methods run by the one Trainer: dml, byot, adversarial, lwf."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import collate
from kdscope.methods import BindContext, Outputs, create_method
from kdscope.methods.schemes import (
    ClassSubset,
    LogitDiscriminator,
    build_peers,
    evaluate_peers,
    expand_classes,
    reverse_gradient,
)
from kdscope.metrics import accuracy
from kdscope.models import create_model, describe
from kdscope.train import Trainer, read_checkpoint
from method_harness import Harness


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(student, data, method, teacher=None, epochs=2, train_set=None, val_set=None, run_dir=None):
    trainer = Trainer(
        student,
        train_set or data.train,
        val_set or data.val,
        teacher=teacher,
        method=method,
        data=DataConfig(batch_size=32),
        train=TrainConfig(epochs=epochs, seed=0),
        run_dir=run_dir,
        progress=False,
    )
    return trainer.fit()


@pytest.fixture(scope="module")
def teacher(digits):
    torch.manual_seed(0)
    model = create_model("resnet8", 10, 1)
    _fit(model, digits, "none", epochs=3)
    return model.eval()


# ---- dml ---------------------------------------------------------------------------------------
class _Fixed(nn.Module):
    """A 'peer' that returns given logits whatever its input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits


def _kl(p_log, q_log):
    """KL(p || q) per batch mean, written out."""
    return (p_log.exp() * (p_log - q_log)).sum(1).mean()


def test_dml_terms_follow_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(8, 5, generator=g) * 2 for _ in range(3)]
    y = torch.randint(0, 5, (8,), generator=g)
    m = create_method("dml", peers=2)
    m.peer_models = nn.ModuleList([_Fixed(z[1]), _Fixed(z[2])])
    student = z[0].clone().requires_grad_()
    terms = m(Outputs(student_logits=student, labels=y, inputs=torch.zeros(8, 1)))
    assert set(terms) == {"kl_peer0", "ce_peer1", "kl_peer1", "ce_peer2", "kl_peer2"}
    logp = [F.log_softmax(v, 1) for v in z]
    for i in range(3):
        expected = sum(_kl(logp[j], logp[i]) for j in range(3) if j != i) / 2
        assert terms[f"kl_peer{i}"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["ce_peer2"].item() == pytest.approx(F.cross_entropy(z[2], y).item(), rel=1e-6)
    # each peer's KL term moves only that peer: the others' distributions are targets
    terms["kl_peer0"].backward()
    assert student.grad.abs().sum() > 0
    assert all(p.logits.grad is None for p in m.peer_models)


def test_dml_kl_vanishes_when_peers_agree():
    z = torch.randn(4, 6)
    m = create_method("dml")
    m.peer_models = nn.ModuleList([_Fixed(z)])
    terms = m(
        Outputs(
            student_logits=z.clone(),
            labels=torch.zeros(4, dtype=torch.long),
            inputs=torch.zeros(4, 1),
        )
    )
    assert abs(terms["kl_peer0"].item()) < 1e-6 and abs(terms["kl_peer1"].item()) < 1e-6


def test_dml_builds_fresh_peers_of_the_asked_architectures():
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    twins = build_peers(student, 2, 10)
    assert [describe(p).spec for p in twins] == [describe(student).spec] * 2
    assert not torch.equal(twins[0].conv1.weight, student.conv1.weight)
    (other,) = build_peers(student, ["resnet14"], 10)
    assert describe(other).spec.name == "resnet14" and describe(other).spec.in_channels == 1
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    (copy,) = build_peers(plain, 1, 10)
    assert copy[1].weight.shape == (10, 64) and not torch.equal(copy[1].weight, plain[1].weight)
    with pytest.raises(ValueError, match="ModelInfo spec"):
        build_peers(plain, ["resnet8"], 10)
    with pytest.raises(ValueError, match="peers=0 is out of range; accepted: an integer >= 1"):
        create_method("dml", peers=0)


def test_dml_both_peers_improve_over_their_first_epoch(digits, tmp_path):
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    m = create_method("dml")
    m.bind(BindContext(student, None, 10, len(digits.train)))
    before = evaluate_peers(student, m, digits.val)
    result = _fit(student, digits, m, epochs=1, run_dir=tmp_path)
    after = evaluate_peers(student, m, digits.val)
    saved = read_checkpoint(tmp_path / "checkpoints" / "last.pt")["method"]
    assert torch.equal(saved["peer_models.0.conv1.weight"], m.peer_models[0].conv1.weight)
    assert {"ce", "kl_peer0", "ce_peer1", "kl_peer1"} == set(result.history[0]["terms"])
    assert after[0] == pytest.approx(result.final_val_acc)
    assert all(a > b + 0.25 for a, b in zip(after, before, strict=True)), (before, after)


# ---- byot --------------------------------------------------------------------------------------
def test_byot_exits_reach_the_deepest_map_and_leave_the_teacher_alone(digits):
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    x, y, _ = collate([digits.train[i] for i in range(8)])
    m = create_method("byot")
    h = Harness(m, student, None, x, num_classes=10)
    assert m.student_layers == ["layer1", "layer2", "layer3"] and len(m.exits) == 2
    terms, out = h.step(x, y)
    assert set(terms) == {f"{k}_exit{i}" for k in ("ce", "kd", "hint") for i in (0, 1)}
    for exit_, f in zip(m.exits, out.student_features, strict=False):
        assert exit_(f)[0].shape == out.student_features[-1].shape
    sum(terms.values()).backward()
    # the deepest classifier teaches: the exits' terms do not pull it towards the exits
    assert student.classifier.weight.grad is None
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(v) for v in terms.values())
    assert m.ce_weight == pytest.approx(0.9)


def test_byot_terms_match_the_formula(digits):
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    x, y, _ = collate([digits.train[i] for i in range(8)])
    m = create_method("byot", alpha=0.3, beta=0.5, temperature=2.0)
    h = Harness(m, student, None, x, num_classes=10)
    terms, out = h.step(x, y)
    feature, logits = m.exits[1](out.student_features[1])
    p_deep = F.softmax(out.student_logits / 2.0, 1)
    kl = (p_deep * (p_deep.log() - F.log_softmax(logits / 2.0, 1))).sum(1).mean() * 4.0
    hint = ((feature - out.student_features[-1]) ** 2).sum() / 8
    assert terms["kd_exit1"].item() == pytest.approx(0.3 * kl.item(), rel=1e-4)
    assert terms["hint_exit1"].item() == pytest.approx(0.5 * hint.item(), rel=1e-4)
    assert terms["ce_exit1"].item() == pytest.approx(
        0.7 * F.cross_entropy(logits, y).item(), rel=1e-5
    )


def test_byot_refuses_vector_features_and_a_single_layer(digits):
    x = collate([digits.train[i] for i in range(2)])[0]
    with pytest.raises(ValueError, match="at least 2"):
        Harness(
            create_method("byot", student_layers=["layer3"]),
            create_model("resnet8", 10, 1),
            None,
            x,
            num_classes=10,
        )
    mlp = create_model("mlp", 10, 1)
    with pytest.raises(ValueError, match="feature maps"):
        Harness(create_method("byot"), mlp, None, x, num_classes=10)


def test_byot_trains_the_student_and_its_exits(digits):
    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    m = create_method("byot")
    result = _fit(student, digits, m, epochs=2)
    assert result.final_val_acc > 0.6
    x, y, _ = collate([digits.val[i] for i in range(len(digits.val))])
    student.eval()
    m.eval()
    accs = [(z.argmax(1) == y).float().mean().item() for z in m.exit_logits(student, x)]
    assert len(accs) == 3 and accs[-1] == pytest.approx(result.final_val_acc)
    assert min(accs) > 0.3, accs


# ---- adversarial -------------------------------------------------------------------------------
def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.randn(5, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(5.0))


def test_adversarial_trains_discriminator_and_student_in_opposite_directions():
    g = torch.Generator().manual_seed(0)
    z_s = (torch.randn(8, 10, generator=g) * 2).requires_grad_()
    z_t = torch.randn(8, 10, generator=g) * 2
    m = create_method("adversarial", adv_weight=2.0)
    m.bind(BindContext(nn.Linear(1, 10), nn.Linear(1, 10), 10, 100))
    terms = m(
        Outputs(student_logits=z_s, labels=torch.zeros(8, dtype=torch.long), teacher_logits=z_t)
    )
    terms["adv"].backward()
    d_grads = [p.grad.clone() for p in m.discriminator.parameters()]
    # the oracle: D's own loss without reversal; D descends it, the student ascends it
    m.zero_grad()
    z_plain = z_s.detach().clone().requires_grad_()
    real, fake = m.discriminator(z_t), m.discriminator(z_plain)
    loss = 2.0 * (
        F.binary_cross_entropy_with_logits(real, torch.ones(8))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros(8))
    )
    loss.backward()
    assert terms["adv"].item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(z_s.grad, -z_plain.grad)
    assert all(
        torch.allclose(a, p.grad)
        for a, p in zip(d_grads, m.discriminator.parameters(), strict=True)
    )


def test_adversarial_student_learns_and_discriminator_trains(digits, teacher):
    torch.manual_seed(1)
    student = create_model("resnet8", 10, 1)
    m = create_method("adversarial")
    torch.manual_seed(2)
    initial = LogitDiscriminator(10).state_dict()
    result = _fit(student, digits, m, teacher=teacher, epochs=2)
    assert set(result.history[0]["terms"]) == {"ce", "kd", "adv"}
    assert result.final_val_acc > 0.4
    assert not torch.equal(m.discriminator.net[0].weight, initial["net.0.weight"])


# ---- lwf ---------------------------------------------------------------------------------------
OLD, NEW = range(5), range(5, 10)


@pytest.fixture(scope="module")
def digits600():
    # forgetting needs enough steps on the new classes to show: 600 examples, not the shared 256
    from kdscope.data import load_data

    return load_data("digits", train_size=600)


@pytest.fixture(scope="module")
def old_model(digits600):
    torch.manual_seed(0)
    model = create_model("resnet8", 5, 1)
    _fit(
        model,
        digits600,
        "none",
        epochs=4,
        train_set=ClassSubset(digits600.train, OLD),
        val_set=ClassSubset(digits600.val, OLD),
    )
    return model.eval()


def test_class_subset_reindexes_and_keeps_labels(digits):
    subset = ClassSubset(digits.train, NEW)
    x, y, i = collate([subset[k] for k in range(len(subset))])
    assert set(y.tolist()) == set(NEW) and torch.equal(i, torch.arange(len(subset)))
    assert len(subset) == int((digits.train.labels >= 5).sum())
    with pytest.raises(ValueError, match="no example"):
        ClassSubset(digits.train, [42])


def test_expand_classes_keeps_the_old_outputs(old_model, digits):
    student = expand_classes(old_model, 10)
    assert describe(student).spec.num_classes == 10 and describe(old_model).spec.num_classes == 5
    x = collate([digits.val[i] for i in range(16)])[0]
    with torch.no_grad():
        assert torch.allclose(student.eval()(x)[:, :5], old_model(x), atol=1e-6)
    with pytest.raises(ValueError, match="must exceed"):
        expand_classes(old_model, 5)


def test_lwf_is_zero_at_the_start_and_needs_fewer_teacher_classes(old_model, digits):
    student = expand_classes(old_model, 10).eval()
    x, y, _ = collate([digits.val[i] for i in range(16)])
    m = create_method("lwf")
    with torch.no_grad():
        terms = m(Outputs(student_logits=student(x), labels=y, teacher_logits=old_model(x)))
    assert abs(terms["lwf"].item()) < 1e-6
    with pytest.raises(ValueError, match="fewer classes"):
        m(Outputs(student_logits=torch.randn(4, 5), labels=y[:4], teacher_logits=torch.randn(4, 5)))
    with pytest.raises(ValueError, match="share the label space"):
        Trainer(student, digits.train, teacher=old_model, method="kd", progress=False)


def test_lwf_remembers_old_classes_that_fine_tuning_forgets(old_model, digits600):
    digits = digits600
    new_train = ClassSubset(digits.train, NEW)
    test_old = ClassSubset(digits.test, OLD)
    x, y, _ = collate([test_old[i] for i in range(len(test_old))])

    def old_head_acc(model):
        with torch.no_grad():
            return (model.eval()(x)[:, :5].argmax(1) == y).float().mean().item()

    accs = {}
    for name in ("none", "lwf"):
        torch.manual_seed(0)
        student = expand_classes(old_model, 10)
        teacher = old_model if name == "lwf" else None
        Trainer(
            student,
            new_train,
            None,
            teacher=teacher,
            method=name,
            data=DataConfig(batch_size=32),
            train=TrainConfig(epochs=3),
            progress=False,
        ).fit()
        accs[name] = old_head_acc(student)
        new_acc = accuracy(student, ClassSubset(digits.test, NEW), 512, "cpu")
        assert new_acc > 0.7, (name, new_acc)
    assert accs["lwf"] > accs["none"] + 0.2, accs


def test_dml_peers_are_not_copies_of_a_seeded_student(digits):
    # Regression: peers built right after the run's seeding started as exact copies of the
    # student, so their KL was 0 and DML degenerated into plain training.
    from kdscope.config import TrainConfig
    from kdscope.methods import create_method
    from kdscope.models import create_model
    from kdscope.train import Trainer

    torch.manual_seed(0)
    student = create_model("resnet8", 10, 1)
    method = create_method("dml")
    trainer = Trainer(
        student,
        digits.train,
        method=method,
        data=DataConfig(batch_size=64),
        train=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    result = trainer.fit()
    assert result.history[0]["terms"]["kl_peer0"] > 1e-4
