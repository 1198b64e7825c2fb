"""Pixel-wise KD and channel-wise distillation against their papers' formulas, written out per
pixel and per channel, and through the one training step on tiny FCN and FCOS models."""

import copy
import math

import numpy as np
import pytest
import torch

from kdscope.methods import Outputs, create_method
from kdscope.methods.dense import channel_wise_divergence
from kdscope.models import create_model
from method_harness import Harness


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(p) - np.log(q))).sum())


def _outputs(s, t, class_dim=1):
    return Outputs(student_logits=s, labels=None, teacher_logits=t, class_dim=class_dim)


def test_pixel_kd_is_the_mean_per_pixel_kl_of_class_distributions():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    temperature, weight = 2.0, 10.0
    per_pixel = [
        _kl(_softmax(t[b, :, i, j].double().numpy() / temperature),
            _softmax(s[b, :, i, j].double().numpy() / temperature))
        for b in range(2) for i in range(3) for j in range(4)
    ]  # fmt: skip
    expected = weight * temperature**2 * np.mean(per_pixel)
    method = create_method("pixel_kd", weight=weight, temperature=temperature)
    got = method(_outputs(s, t))["pixel_kd"]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert method.ce_weight == 1.0


def test_channel_wise_divergence_is_the_kl_of_per_channel_spatial_softmaxes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    temperature = 4.0
    per_channel = [
        _kl(_softmax(t[b, c].double().numpy().ravel() / temperature),
            _softmax(s[b, c].double().numpy().ravel() / temperature))
        for b in range(3) for c in range(4)
    ]  # fmt: skip
    # Shu et al. 2021, Eq. 4: T^2 / C * sum_c KL, averaged over the batch.
    expected = temperature**2 * np.mean(per_channel)
    got = channel_wise_divergence(s, t, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert channel_wise_divergence(t, t, temperature).item() == pytest.approx(0.0, abs=1e-6)
    method = create_method("cwd")
    assert method(_outputs(s, t))["cwd"].item() == pytest.approx(
        3.0 * channel_wise_divergence(s, t, 4.0).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="one shape"):
        channel_wise_divergence(s, t[:, :2], temperature)


def test_cwd_refuses_detection_logits_on_logits():
    method = create_method("cwd")
    with pytest.raises(ValueError, match="maps=.features."):
        method(_outputs(torch.zeros(2, 7, 3), torch.zeros(2, 7, 3), class_dim=-1))


@pytest.mark.parametrize("name", ["pixel_kd", "cwd"])
def test_dense_methods_train_a_segmenter(name):
    torch.manual_seed(0)
    student = create_model("fcn_resnet8", 3, 1)
    teacher = create_model("fcn_resnet14", 3, 1).eval()
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4, 16, 16))
    harness = Harness(create_method(name), student, teacher, x, num_classes=3)
    terms, _ = harness.step(x, y)
    (loss,) = terms.values()
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert student.score.weight.grad is not None


def test_cwd_on_fpn_levels_of_detectors():
    torch.manual_seed(0)
    teacher = create_model("fcos_resnet8", 3, 1).eval()
    student = copy.deepcopy(teacher).train()
    x = torch.randn(2, 1, 32, 32)
    y = [{"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([1])}] * 2
    method = create_method("cwd", maps="features")
    harness = Harness(method, student, teacher, x, num_classes=3)
    for module in student.modules():  # the teacher's running statistics, not the batch's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    assert method.student_layers == [
        "detector.backbone.fpn.layer_blocks.0",
        "detector.backbone.fpn.layer_blocks.1",
    ]
    terms, _ = harness.step(x, y)
    # Same weights and normalisation: the student's levels are the teacher's.
    assert terms["cwd"].item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for p in student.detector.backbone.fpn.parameters():
            p.add_(0.1 * torch.randn_like(p))
    terms, _ = harness.step(x, y)
    assert terms["cwd"].item() > 0


def test_gld_scores_a_segmenters_pooled_stage_with_its_1x1_scorer():
    torch.manual_seed(0)
    student = create_model("fcn_resnet8", 3, 1)
    teacher = create_model("fcn_resnet14", 3, 1).eval()
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 3, (4, 16, 16))
    method = create_method("gld")
    harness = Harness(method, student, teacher, x, num_classes=3)
    assert method.student_layers == ["backbone.layer3"]
    f = torch.randn(4, student.score.in_channels, 4, 4)
    global_logits, local_logits = method.logits(f, student.score)
    # The scorer on the image-mean map, and on each of the 2 x 2 regions' means.
    expected = student.score(f.mean((2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(global_logits, expected, atol=1e-6)
    region = student.score(f[:, :, :2, 2:].mean((2, 3), keepdim=True)).flatten(1)
    assert torch.allclose(local_logits.view(4, 4, 3)[:, 1], region, atol=1e-6)
    terms, _ = harness.step(x, y)
    assert set(terms) == {"gld_global", "gld_local", "gld_relation"}
    assert all(math.isfinite(v.item()) for v in terms.values())
