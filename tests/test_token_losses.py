"""Token-level distillation losses against hand computations, torch.distributions and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from torch import Tensor
from torch.distributions import Categorical, kl_divergence
from torch.utils.data import DataLoader

from kdscope.config import DataConfig, TrainConfig
from kdscope.data.lm import TokenBlocks
from kdscope.data.memory import collate
from kdscope.methods import BindContext, Outputs, create_method
from kdscope.methods.response import kd_div
from kdscope.methods.token_losses import generalized_jsd, reverse_kl, token_kd
from kdscope.methods.topk import TopKTargets, topk_bytes_per_token, topk_kd, topk_targets
from kdscope.models.generate import generate
from kdscope.models.gpt import GPT
from kdscope.train import Trainer
from kdscope.train.cache import TeacherCache, TopKCache


def logits_pair(shape=(2, 3, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2, torch.randn(*shape, generator=g) * 2


def categorical(logits, temperature=1.0):
    return Categorical(logits=logits.double() / temperature)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_token_kd_is_the_mean_forward_kl_over_positions(temperature):
    s, t = logits_pair()
    expected = kl_divergence(categorical(t, temperature), categorical(s, temperature)).mean()
    loss = token_kd(s, t, temperature)
    assert loss.item() == pytest.approx(expected.item() * temperature**2, rel=1e-5)
    assert torch.equal(loss, kd_div(s.reshape(6, 7), t.reshape(6, 7), temperature))
    assert token_kd(t, t, temperature).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_reverse_kl_is_kl_student_to_teacher(temperature):
    s, t = logits_pair()
    expected = kl_divergence(categorical(s, temperature), categorical(t, temperature)).mean()
    loss = reverse_kl(s, t, temperature)
    assert loss.item() == pytest.approx(expected.item() * temperature**2, rel=1e-5)
    assert loss.item() != pytest.approx(token_kd(s, t, temperature).item(), rel=1e-2)
    assert reverse_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_generalized_jsd_matches_the_formula_and_scipy_at_one_half():
    s, t = logits_pair()
    p = torch.softmax(t.double(), -1).reshape(-1, 7).numpy()
    q = torch.softmax(s.double(), -1).reshape(-1, 7).numpy()
    beta = 0.3
    m = beta * p + (1 - beta) * q
    by_hand = (beta * (p * np.log(p / m)).sum(1) + (1 - beta) * (q * np.log(q / m)).sum(1)).mean()
    assert generalized_jsd(s, t, beta).item() == pytest.approx(by_hand, rel=1e-5)
    # SciPy's jensenshannon is sqrt(JSD_0.5) in nats.
    scipy_js = np.mean([jensenshannon(pi, qi) ** 2 for pi, qi in zip(p, q, strict=True)])
    assert generalized_jsd(s, t, 0.5).item() == pytest.approx(scipy_js, rel=1e-5)
    assert generalized_jsd(s, t, 0.3).item() != pytest.approx(generalized_jsd(s, t, 0.7).item())
    assert generalized_jsd(t, t, 0.3).item() == pytest.approx(0.0, abs=1e-7)
    at_two = generalized_jsd(s, t, beta, temperature=2.0).item()
    assert at_two == pytest.approx(4 * generalized_jsd(s / 2, t / 2, beta).item(), rel=1e-6)


def test_generalized_jsd_limits_are_forward_and_reverse_kl():
    s, t = logits_pair()
    eps = 1e-6
    assert (generalized_jsd(s.double(), t.double(), eps) / eps).item() == pytest.approx(
        token_kd(s.double(), t.double()).item(), rel=1e-3
    )
    assert (generalized_jsd(s.double(), t.double(), 1 - eps) / eps).item() == pytest.approx(
        reverse_kl(s.double(), t.double()).item(), rel=1e-3
    )
    # TRL's convention at the ends: beta 0 is the forward KL, beta 1 the reverse KL, exactly.
    assert torch.equal(generalized_jsd(s, t, 0.0), token_kd(s, t))
    assert torch.equal(generalized_jsd(s, t, 1.0, temperature=2.0), reverse_kl(s, t, 2.0))
    for beta in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"beta must lie in \[0, 1\]"):
            generalized_jsd(s, t, beta)


def test_losses_check_shapes_and_temperature():
    s, t = logits_pair()
    with pytest.raises(ValueError, match="same shape"):
        token_kd(s, t[:, :2])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        reverse_kl(s, t, 0.0)


# --- top-k cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_kd_with_k_equal_to_vocab_is_the_full_loss_bitwise(temperature):
    s, t = logits_pair(shape=(4, 16, 65))
    targets = topk_targets(t, k=65, temperature=temperature, dtype=torch.float32)
    assert torch.all(targets.tail == float("-inf"))
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    full, top = token_kd(s1, t, temperature), topk_kd(s2, targets)
    assert torch.equal(full, top)
    full.backward()
    top.backward()
    assert torch.equal(s1.grad, s2.grad)
    # The default float16 cache rounds the teacher's log-probabilities (~1e-3 relative).
    half = topk_kd(s, topk_targets(t, k=65, temperature=temperature))
    assert half.item() == pytest.approx(full.item(), rel=2e-3)


def test_topk_targets_store_the_largest_sorted_by_id_and_the_tail_mass():
    p = torch.tensor([0.05, 0.5, 0.15, 0.3])
    targets = topk_targets(p.log().view(1, 1, 4), k=2)
    assert targets.ids.dtype == torch.int16 and targets.logprobs.dtype == torch.float16
    assert targets.ids.tolist() == [[[1, 3]]]
    assert torch.allclose(targets.logprobs.float(), torch.tensor([[[0.5, 0.3]]]).log(), atol=1e-3)
    assert targets.tail.float().exp().item() == pytest.approx(0.2, rel=1e-3)
    assert targets.take(torch.tensor([0])).ids.shape == (1, 1, 2)


def test_topk_kd_by_hand():
    # Teacher (0.05, 0.5, 0.15, 0.3), top-2 = tokens 1 and 3, tail 0.2; student (0.1, 0.4, 0.1,
    # 0.4), tail 0.2: loss = 0.5 log(0.5/0.4) + 0.3 log(0.3/0.4) + 0.2 log(0.2/0.2).
    p = torch.tensor([0.05, 0.5, 0.15, 0.3]).log().view(1, 1, 4)
    q = torch.tensor([0.1, 0.4, 0.1, 0.4]).log().view(1, 1, 4)
    expected = 0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4)
    exact = topk_kd(q, topk_targets(p, k=2, dtype=torch.float32))
    assert exact.item() == pytest.approx(expected, rel=1e-5)
    assert topk_kd(q, topk_targets(p, k=2)).item() == pytest.approx(expected, abs=2e-3)
    # At T = 2 the cache holds softmax(z / 2), and the loss is scaled by 4.
    pt = torch.softmax(p / 2, -1).flatten().double()
    qt = torch.softmax(q / 2, -1).flatten().double()
    top = [1, 3]
    tail_p, tail_q = 1 - pt[top].sum(), 1 - qt[top].sum()
    by_hand = (pt[top] * (pt[top] / qt[top]).log()).sum() + tail_p * (tail_p / tail_q).log()
    at_two = topk_kd(q, topk_targets(p, k=2, temperature=2.0, dtype=torch.float32))
    assert at_two.item() == pytest.approx(4 * by_hand.item(), rel=1e-5)


def test_topk_kd_is_a_lower_bound_that_tightens_with_k_and_has_finite_gradients():
    s, t = logits_pair(shape=(2, 8, 30), seed=3)
    full = token_kd(s, t).item()
    values = []
    for k in (1, 3, 10, 29, 30):
        student = s.clone().requires_grad_()
        loss = topk_kd(student, topk_targets(t, k, dtype=torch.float32))
        loss.backward()
        assert torch.isfinite(student.grad).all()
        values.append(loss.item())
    assert all(v <= full + 1e-6 for v in values)
    assert values == sorted(values)
    assert values[-1] == pytest.approx(full, rel=1e-6)
    assert topk_kd(t, topk_targets(t, 3, dtype=torch.float32)).item() == pytest.approx(0, abs=1e-6)


def test_topk_kd_ignores_a_teacher_tail_of_zero_mass():
    teacher = torch.tensor([[[0.0, 0.0, -1e4]]])  # token 2 has probability exp(-1e4) = 0
    student = torch.zeros(1, 1, 3, requires_grad=True)
    loss = topk_kd(student, topk_targets(teacher, k=2, dtype=torch.float32))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(1.5), rel=1e-6)  # 2 * 0.5 log(0.5 / (1/3))
    assert torch.isfinite(student.grad).all()


def test_topk_errors_and_bytes_per_token():
    s, t = logits_pair()
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 7\]"):
        topk_targets(t, k=8)
    with pytest.raises(ValueError, match="do not match top-2 targets"):
        topk_kd(s[:, :2], topk_targets(t, k=2))
    assert isinstance(topk_targets(t, 2), TopKTargets)
    assert topk_bytes_per_token(8, 65) == 8 * (2 + 2) + 2
    assert topk_bytes_per_token(8, 50_257) == 8 * (2 + 4) + 2  # GPT-2's vocabulary needs int32
    assert topk_bytes_per_token(4, 65, torch.float32) == 4 * (4 + 2) + 4
    targets = topk_targets(torch.randn(3, 5, 65), 8)
    stored = sum(x.element_size() * x.numel() for x in targets[:3])
    assert stored == 15 * topk_bytes_per_token(8, 65)


# --- the methods --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "loss"),
    [
        ("kd", {"temperature": 2.0, "alpha": 0.7}, lambda s, t: token_kd(s, t, 2.0)),
        ("reverse_kl", {"temperature": 2.0, "alpha": 0.7}, lambda s, t: reverse_kl(s, t, 2.0)),
        ("jsd", {"beta": 0.3, "temperature": 2.0, "alpha": 0.7},
         lambda s, t: generalized_jsd(s, t, 0.3, 2.0)),
    ],
)  # fmt: skip
def test_token_methods_weigh_their_loss_by_alpha_over_every_layout(name, params, loss):
    method = create_method(name, **params)
    assert method.ce_weight == pytest.approx(0.3)
    s, t = logits_pair(shape=(2, 5, 7))
    y = torch.zeros(2, 5, dtype=torch.long)
    (term,) = method(Outputs(student_logits=s, labels=y, teacher_logits=t, class_dim=-1)).values()
    assert term.item() == pytest.approx(0.7 * loss(s, t).item(), rel=1e-6)
    # A segmenter's (B, C, H, W) scores are read along C: the same loss per pixel.
    pixels = Outputs(
        student_logits=s.permute(0, 2, 1)[..., None],
        labels=y,
        teacher_logits=t.permute(0, 2, 1)[..., None],
        class_dim=1,
    )
    (per_pixel,) = method(pixels).values()
    assert per_pixel.item() == pytest.approx(term.item(), rel=1e-6)


def test_random_control_per_token_keeps_each_positions_teacher_moments():
    s, t = logits_pair(shape=(3, 8, 65))
    method = create_method("random_control", temperature=1.0)
    out = Outputs(student_logits=s, labels=torch.zeros(3, 8), teacher_logits=t, class_dim=-1)
    noise = method.target_logits(out)
    assert noise.shape == t.shape
    assert torch.allclose(noise.mean(-1), t.mean(-1), atol=1e-5)
    assert torch.allclose(noise.std(-1), t.std(-1), atol=1e-5)
    # The teacher's ranking is gone: its top-1 survives at chance level (1/65) only.
    assert (noise.argmax(-1) == t.argmax(-1)).float().mean() < 0.2
    (term,) = method(out).values()
    assert torch.isfinite(term) and term.item() > 0


# --- the Trainer's top-k teacher cache ----------------------------------------------------------


def _lm_step_losses(cache_cfg: dict, steps: int = 3) -> tuple[list[Tensor], object]:
    """The first ``steps`` losses of kd (T = 2) from a GPT teacher to a GPT student on random
    token blocks, with the teacher cache ``cache_cfg`` (TrainConfig fields)."""
    tokens = torch.randint(0, 13, (24 * 8 + 1,), generator=torch.Generator().manual_seed(0))
    train = TokenBlocks(tokens, 8)
    torch.manual_seed(0)
    teacher = GPT(13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    student = GPT(13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    trainer = Trainer(
        student, train, teacher=teacher, method=create_method("kd", temperature=2.0),
        data=DataConfig(batch_size=8, eval_batch_size=16),
        train=TrainConfig(epochs=1, device="cpu", **cache_cfg), progress=False,
    )  # fmt: skip
    trainer._setup()
    trainer._build_cache("memory", None)
    losses = []
    with trainer.step.taps():
        for x, y, idx in DataLoader(train, batch_size=8, collate_fn=collate):
            losses.append(trainer.step(x, y, idx).terms["kd"].detach())
            if len(losses) == steps:
                break
    return losses, trainer.cache


def test_a_top_k_cache_of_the_whole_vocabulary_gives_the_full_caches_loss_bitwise():
    full, full_cache = _lm_step_losses({"cache_dtype": "float32"})
    top, top_cache = _lm_step_losses({"cache_dtype": "float32", "cache_topk": 13})
    assert isinstance(full_cache, TeacherCache) and isinstance(top_cache, TopKCache)
    assert top_cache.targets.logprobs.shape == (24, 8, 13) and top_cache.targets.temperature == 2.0
    assert all(torch.equal(a, b) for a, b in zip(full, top, strict=True))
    # k < V: a lower bound (the tail is one bucket), within float16 rounding of it.
    small, small_cache = _lm_step_losses({"cache_topk": 4, "cache_dtype": "float16"})
    assert small_cache.targets.logprobs.dtype == torch.float16
    assert small_cache.targets.ids.dtype == torch.int16
    assert all(0 < s.item() <= f.item() * (1 + 1e-3) for s, f in zip(small, full, strict=True))


def test_a_top_k_cache_is_refused_where_it_cannot_serve():
    with pytest.raises(ValueError, match="train.cache_topk is read by method kd"):
        Trainer(
            GPT(13, block_size=8, n_layer=1, n_head=2, n_embd=8),
            TokenBlocks(torch.arange(17) % 13, 8),
            teacher=GPT(13, block_size=8, n_layer=1, n_head=2, n_embd=8),
            method="reverse_kl",
            train=TrainConfig(epochs=1, cache_topk=4),
            progress=False,
        ).fit()
    with pytest.raises(ValueError, match="exceeds the teacher's 13 classes"):
        _lm_step_losses({"cache_topk": 14})


# --- on-policy distillation ---------------------------------------------------------------------


def _on_policy_step(lmbda: float, seed: int):
    torch.manual_seed(0)
    teacher = GPT(13, block_size=8, n_layer=2, n_head=2, n_embd=16).eval()
    student = GPT(13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    method = create_method("on_policy", lmbda=lmbda, beta=0.3, alpha=0.8, prompt=0.25)
    method.bind(BindContext(student=student, teacher=teacher, num_classes=13, num_train=4))
    x = torch.randint(0, 13, (4, 8), generator=torch.Generator().manual_seed(1))
    out = Outputs(
        student_logits=student(x), labels=x, teacher_logits=teacher(x).detach(), inputs=x,
        class_dim=-1,
    )  # fmt: skip
    torch.manual_seed(seed)
    return method(out)["jsd"], out, (method, student, teacher, x)


def test_on_policy_scores_the_students_own_samples_with_the_teachers_jsd():
    term, _, (method, student, teacher, x) = _on_policy_step(lmbda=1.0, seed=5)
    torch.manual_seed(5)
    torch.rand(())  # the draw that chose an on-policy step
    sequences = generate(student, x[:, :2], 6)
    assert torch.equal(sequences[:, :2], x[:, :2]) and not torch.equal(sequences, x)
    with torch.no_grad():
        expected = generalized_jsd(student(sequences)[:, 1:-1], teacher(sequences)[:, 1:-1], 0.3)
    assert term.item() == pytest.approx(0.8 * expected.item(), rel=1e-6)
    assert term.requires_grad  # the student learns through its scores of its samples
    # lmbda = 0 never samples: it is the jsd method on the data.
    supervised, out, _ = _on_policy_step(lmbda=0.0, seed=5)
    (jsd,) = create_method("jsd", beta=0.3, alpha=0.8)(out).values()
    assert torch.equal(supervised, jsd)
