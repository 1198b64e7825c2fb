"""Feature-based methods: fitnet, at, ofd, cka, uet, and the shared adapters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import nn

from kdscope.methods import Outputs, create_method
from kdscope.methods.adapters import ConvRegressor, match_spatial
from kdscope.methods.feature import attention_map, bn_before, ofd_margin, ofd_partial_l2
from kdscope.models import create_model, describe
from method_harness import Harness

C = 10


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, C, (8,), generator=g)


def _pair(student="resnet8", teacher="resnet14"):
    torch.manual_seed(0)
    return create_model(student, C, 1), create_model(teacher, C, 1)


def _step(name, batch, student=None, teacher=None, **kwargs):
    if student is None:
        student, teacher = _pair()
    x, y = batch
    method = create_method(name, **kwargs)
    h = Harness(method, student, teacher, x, C)
    terms, out = h.step(x, y)
    return method, terms, out, student


def _grad_ok(module: nn.Module) -> bool:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return (
        bool(grads)
        and all(torch.isfinite(g).all() for g in grads)
        and any(g.abs().sum() > 0 for g in grads)
    )


@pytest.mark.parametrize("name", ["fitnet", "at", "ofd", "cka", "uet"])
def test_finite_and_gradients_reach_the_student_and_the_adapters(name, batch):
    method, terms, out, student = _step(name, batch)
    loss = sum(terms.values())
    assert torch.isfinite(loss) and loss.item() > 0
    for f in out.student_features:
        f.retain_grad()
    loss.backward()
    assert _grad_ok(student)
    assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in out.student_features)
    if list(method.parameters()):
        assert _grad_ok(method)


def test_fitnet_hints_the_middle_stage_pair_through_a_conv_regressor(batch):
    method, _, out, _ = _step("fitnet", batch)
    assert method.student_layers == ["layer2"] and method.teacher_layers == ["layer2"]
    assert method.regressor(out.student_features[0]).shape == out.teacher_features[0].shape


def test_fitnet_two_stage_schedule(batch):
    method = create_method("fitnet", hint_epochs=2)
    assert method.needs.teacher_logits
    assert [method.ce_weight_at(e) for e in (0, 1, 2, 5)] == [
        0.0,
        0.0,
        pytest.approx(0.1),
        pytest.approx(0.1),
    ]
    student, teacher = _pair()
    x, y = batch
    h = Harness(method, student, teacher, x, C)
    assert set(h.step(x, y, epoch=1)[0]) == {"hint"}
    assert set(h.step(x, y, epoch=2)[0]) == {"kd"}
    assert create_method("fitnet").ce_weight_at(0) == 1.0
    with pytest.raises(
        ValueError, match="parameter hint_epochs=-1 is out of range; accepted: an integer >= 0"
    ):
        create_method("fitnet", hint_epochs=-1)


@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [
        ((2, 8, 16, 16), (2, 12, 8, 8)),
        ((2, 8, 4, 4), (2, 12, 8, 8)),
        ((2, 8, 7, 7), (2, 12, 4, 4)),
        ((2, 8, 5, 5), (2, 12, 5, 5)),
        ((2, 8), (2, 12)),
    ],
)
def test_conv_regressor_maps_student_shape_to_teacher_shape(s_shape, t_shape):
    assert ConvRegressor(s_shape, t_shape)(torch.randn(s_shape)).shape == t_shape


def test_conv_regressor_rejects_maps_it_cannot_grow():
    with pytest.raises(ValueError, match="smaller than the teacher"):
        ConvRegressor((2, 8, 3, 3), (2, 8, 8, 8))


def test_attention_map_reference_value_and_scale_invariance():
    f = torch.tensor([[[[1.0, 2.0]], [[1.0, 0.0]]]])  # (1, 2 channels, 1, 2)
    expected = torch.tensor([1.0, 2.0]) / 5**0.5  # mean_c f^2 = [1, 2], normalised
    assert torch.allclose(attention_map(f), expected.unsqueeze(0))
    g = torch.randn(4, 3, 6, 6)
    assert torch.allclose(attention_map(g), attention_map(7.5 * g), atol=1e-6)


def test_at_is_invariant_to_feature_scale_and_zero_for_identical_maps():
    m = create_method("at")
    s, t = [torch.rand(4, 8, 8, 8)], [torch.rand(4, 16, 4, 4)]
    base = m(Outputs(torch.zeros(4, C), torch.zeros(4), student_features=s, teacher_features=t))[
        "at"
    ]
    scaled = m(
        Outputs(torch.zeros(4, C), torch.zeros(4), student_features=[3 * s[0]], teacher_features=t)
    )
    assert scaled["at"].item() == pytest.approx(base.item(), rel=1e-5)
    same = m(Outputs(torch.zeros(4, C), torch.zeros(4), student_features=t, teacher_features=t))[
        "at"
    ]
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_match_spatial_pools_the_larger_map():
    a, b = match_spatial(torch.ones(2, 3, 8, 8), torch.ones(2, 5, 4, 4))
    assert a.shape == (2, 3, 4, 4) and b.shape == (2, 5, 4, 4)
    a, b = match_spatial(torch.ones(2, 3, 2, 2), torch.ones(2, 5, 4, 4))
    assert b.shape == (2, 5, 2, 2)


def test_at_refuses_vector_features(batch):
    with pytest.raises(ValueError, match="at needs convolutional feature maps"):
        _step("at", batch, student_layers=["classifier:in"], teacher_layers=["classifier:in"])


@pytest.mark.parametrize(("gamma", "beta"), [(1.0, 0.0), (2.0, 1.5), (0.5, -1.0), (1.0, -2.5)])
def test_ofd_margin_is_the_mean_of_the_negative_part_of_the_bn_gaussian(gamma, beta):
    bn = nn.BatchNorm2d(1)
    bn.weight.data.fill_(gamma)
    bn.bias.data.fill_(beta)
    expected = truncnorm(-float("inf"), (0 - beta) / gamma, loc=beta, scale=gamma).mean()
    assert ofd_margin(bn).item() == pytest.approx(expected, rel=1e-4)


def test_ofd_margin_falls_back_to_minus_three_sigma_for_almost_positive_responses():
    bn = nn.BatchNorm2d(1)
    bn.weight.data.fill_(0.5)
    bn.bias.data.fill_(2.0)  # Phi(-4) < 0.001
    assert ofd_margin(bn).item() == pytest.approx(-1.5)


def test_ofd_partial_l2_ignores_student_responses_below_a_negative_target():
    margin = torch.tensor(-1.0)
    teacher = torch.tensor([-3.0, -3.0, 2.0, 2.0])  # targets -1, -1, 2, 2
    student = torch.tensor([-5.0, 0.0, 1.0, 4.0])
    # -5 < -1 (ignored); 0 > -1 (1^2); 1 vs 2 (1^2); 4 vs 2 (2^2)
    assert ofd_partial_l2(student, teacher, margin).item() == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("model", "layer", "bn"),
    [
        ("resnet8", "layer3.0.act:in", "layer3.0.bn2"),
        ("resnet14", "layer1.1.act:in", "layer1.1.bn2"),
        ("wrn_16_2", "block2.0.relu1:in", "block2.0.bn1"),
        ("wrn_16_2", "act:in", "bn"),
        ("mobilenetv2", "blocks.2", "blocks.2.2.conv.7"),
        ("vgg8", "block1.2:in", "block1.1"),
    ],
)
def test_bn_before_finds_the_batchnorm_feeding_the_pre_activation(model, layer, bn):
    net = create_model(model, C, 3)
    with torch.no_grad():
        from kdscope.features import FeatureTap

        with FeatureTap(net.eval(), [layer]) as tap:
            net(torch.randn(2, 3, 32, 32))
    assert bn_before(net, layer, tap[layer].shape[1]) is net.get_submodule(bn)


def test_ofd_uses_pre_activation_layers_and_refuses_models_without_them(batch):
    method, _, _, _ = _step("ofd", batch)
    assert method.student_layers == ["layer1.0.act:in", "layer2.0.act:in", "layer3.0.act:in"]
    assert method.margin0.shape == (1, 16, 1, 1) and (method.margin0 < 0).all()
    mlp_s, mlp_t = (
        create_model("mlp", C, 1, input_size=16),
        create_model("mlp", C, 1, input_size=16),
    )
    with pytest.raises(ValueError, match="ofd needs a BatchNorm"):
        _step("ofd", batch, student=mlp_s, teacher=mlp_t)


def test_cka_loss_is_zero_for_identical_features(batch):
    student, _ = _pair()
    teacher = copy.deepcopy(student)
    student.eval()  # same BN statistics as the teacher: identical features
    _, terms, _, _ = _step("cka", batch, student=student, teacher=teacher)
    assert terms["cka"].item() == pytest.approx(0.0, abs=1e-5)


def test_cka_loss_is_invariant_to_scale_and_rotation_of_features():
    m = create_method("cka")
    s, t = torch.randn(12, 6), torch.randn(12, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    base = m(
        Outputs(torch.zeros(12, C), torch.zeros(12), student_features=[s], teacher_features=[t])
    )
    moved = m(
        Outputs(
            torch.zeros(12, C), torch.zeros(12), student_features=[3 * s @ q], teacher_features=[t]
        )
    )
    assert moved["cka"].item() == pytest.approx(base["cka"].item(), rel=1e-5)
    assert 0 < base["cka"].item() < 2


def test_uet_target_is_mean_plus_spread_of_mc_dropout_draws():
    n, p = 6, 0.2
    m = create_method("uet", p=p, samples=n)
    f = torch.tensor([1.5, -0.7]).repeat_interleave(50_000)
    torch.manual_seed(1)
    target = m.augmented_target(f)
    for value in (1.5, -0.7):
        got = target[f == value]
        # mean + std of the n draws when k of them keep the element (torch.std as reference)
        outcomes = torch.stack(
            [
                torch.tensor([value / (1 - p)] * k + [0.0] * (n - k)).mean()
                + torch.tensor([value / (1 - p)] * k + [0.0] * (n - k)).std()
                for k in range(n + 1)
            ]
        )
        k = (got[:, None] - outcomes).abs().argmin(1)
        assert torch.allclose(got, outcomes[k], atol=1e-5)  # every target is one of them
        frequency = torch.bincount(k, minlength=n + 1) / got.numel()
        binomial = torch.distributions.Binomial(n, torch.tensor(1 - p))
        assert torch.allclose(frequency, binomial.log_prob(torch.arange(n + 1.0)).exp(), atol=0.01)
    draws = torch.nn.functional.dropout(f[:1000].expand(n, 1000), p, True)
    expected = (draws.mean(0) + draws.std(0)).mean()
    assert target[:1000].mean() == pytest.approx(expected.item(), rel=0.05)
    with pytest.raises(
        ValueError, match=r"parameter p=1.0 is out of range; accepted: a real number in \(0, 1\)"
    ):
        create_method("uet", p=1.0)


def test_uet_distils_the_last_stage(batch):
    method, _, _, _ = _step("uet", batch)
    assert method.student_layers == ["layer3"] and method.teacher_layers == ["layer3"]


def test_penultimate_layer_is_the_classifier_input():
    assert describe(create_model("resnet8", C, 1)).penultimate == "classifier:in"


def test_at_weights_by_beta_as_the_authors_code_does():
    """beta * sum over stage pairs of mean((A_s - A_t)^2), beta = 1000, A = normalize(mean_c
    f^2): the attention-transfer code's at_loss (and mdistiller's, torchdistill's) written out."""
    torch.manual_seed(0)
    s = [torch.randn(4, 8, 8, 8), torch.randn(4, 8, 4, 4)]
    t = [torch.randn(4, 16, 8, 8), torch.randn(4, 32, 4, 4)]

    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    reference = 1000.0 * sum((at(a) - at(b)).pow(2).mean() for a, b in zip(s, t, strict=True))
    out = Outputs(torch.zeros(4, C), torch.zeros(4), student_features=s, teacher_features=t)
    assert create_method("at")(out)["at"].item() == pytest.approx(reference.item(), rel=1e-6)
