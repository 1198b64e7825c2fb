import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from kdscope.explain.gradcam import (
    eval_mode,
    grad_cam,
    layer_activations,
    layer_features,
    minmax,
)
from kdscope.features import FeatureTap
from kdscope.models import create_model


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def resnet8() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_channels=1)
    # Non-trivial BatchNorm statistics, so eval mode matters.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def reference(model, layer, x, targets=None):
    with GradCAM(model, [model.get_submodule(layer)]) as cam:
        wrapped = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        return cam(x, wrapped)


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3", "layer3.0.conv2"])
def test_matches_pytorch_grad_cam_on_resnet8(layer):
    model = resnet8()
    x = torch.randn(6, 1, 20, 20, generator=torch.Generator().manual_seed(1))
    targets = [3, 1, 4, 1, 5, 9]
    for t in (None, targets):
        ours = grad_cam(model, layer, x, t)
        np.testing.assert_allclose(ours.numpy(), reference(model, layer, x, t), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "layer"),
    [("tv:resnet18", "layer4"), ("tv:resnet18", "layer3"), ("resnet56", "layer3")],
)
def test_matches_pytorch_grad_cam_on_other_architectures(name, layer):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=1)
    x = torch.randn(6, 1, 24, 24, generator=torch.Generator().manual_seed(1))
    for t in (None, [3, 1, 4, 1, 5, 9]):
        ours = grad_cam(model, layer, x, t)
        np.testing.assert_allclose(ours.numpy(), reference(model, layer, x, t), atol=1e-5)


def test_matches_pytorch_grad_cam_on_plain_sequential():
    torch.manual_seed(0)
    model = tiny_net()
    x = torch.randn(4, 3, 12, 12)
    for layer in ("1", "4"):
        ours = grad_cam(model, layer, x)
        np.testing.assert_allclose(ours.numpy(), reference(model, layer, x), atol=1e-5)


def test_maps_are_finite_in_unit_range_and_input_sized():
    model = resnet8()
    maps = grad_cam(model, "layer3", torch.randn(5, 1, 24, 16))
    assert maps.shape == (5, 24, 16)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert torch.allclose(maps.flatten(1).max(1).values, torch.ones(5))


def test_custom_objective_equals_class_targets():
    model = resnet8()
    x = torch.randn(4, 1, 16, 16)
    classes = torch.tensor([0, 2, 2, 7])

    def objective(logits, _acts):
        return logits.gather(1, classes[:, None]).sum()

    assert torch.allclose(
        grad_cam(model, "layer2", x, objective), grad_cam(model, "layer2", x, classes)
    )


def test_objective_on_activations_changes_the_map():
    model = resnet8()
    x = torch.randn(4, 1, 16, 16)
    by_class = grad_cam(model, "layer2", x)
    by_energy = grad_cam(model, "layer2", x, lambda _logits, acts: -acts[:, :8].pow(2).sum())
    assert not torch.allclose(by_class, by_energy)


def test_restores_training_mode_and_leaves_parameter_grads_alone():
    model = resnet8().train()
    model.layer2.eval()
    grad_cam(model, "layer3", torch.randn(3, 1, 16, 16))
    assert model.training and model.layer1.training and not model.layer2.training
    assert all(p.grad is None for p in model.parameters())


def test_frozen_model_gives_the_same_maps():
    model = resnet8()
    x = torch.randn(3, 1, 16, 16)
    expected = grad_cam(model, "layer3", x)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        assert torch.allclose(grad_cam(model, "layer3", x), expected)


def test_errors_name_the_problem():
    model = resnet8()
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="spatial layer"):
        grad_cam(model, "classifier", x)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        grad_cam(model, "layer3", x, [0, 10])
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2"):
        grad_cam(model, "layer3", x, [0, 1, 2])
    with pytest.raises(ValueError, match="scalar"):
        grad_cam(model, "layer3", x, lambda logits, _acts: logits.sum(1))
    with pytest.raises(ValueError, match="layer9"):
        grad_cam(model, "layer9", x)


def test_minmax_sends_constant_maps_to_zero():
    maps = torch.stack(
        [torch.zeros(3, 3), torch.full((3, 3), 2.0), torch.arange(9.0).reshape(3, 3)]
    )
    out = minmax(maps)
    assert (out[:2] == 0).all()
    assert torch.allclose(out[2], torch.arange(9.0).reshape(3, 3) / 8)


def test_eval_mode_restores_after_an_error():
    model = tiny_net().train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError
    assert model.training and model[3].training


def test_layer_input_and_following_inplace_activation():
    torch.manual_seed(0)
    model = tiny_net()
    x = torch.randn(4, 3, 12, 12)
    # The input of module 2 is the output of module 1.
    assert torch.equal(grad_cam(model, "2:in", x), grad_cam(model, "1", x))
    # An in-place ReLU after the layer must not change the layer's activations or gradients.
    inplace = tiny_net()
    inplace.load_state_dict(model.state_dict())
    inplace[1] = nn.ReLU(inplace=True)
    assert torch.equal(grad_cam(inplace, "0", x), grad_cam(model, "0", x))


def test_layer_activations_record_nothing_before_the_layer():
    model = resnet8()
    with torch.no_grad():
        logits, acts = layer_activations(model, "layer2", torch.randn(3, 1, 16, 16))
        assert not torch.is_grad_enabled()  # the caller's mode is back
    assert acts.is_leaf and logits.requires_grad
    (grad,) = torch.autograd.grad(logits.sum(), acts, retain_graph=True)
    assert grad.shape == acts.shape and grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="does not require grad|not have been used"):
        torch.autograd.grad(logits.sum(), model.conv1.weight)


def test_layer_features_stop_at_the_layer():
    model = resnet8()
    x = torch.randn(3, 1, 16, 16)
    calls = []
    handle = model.layer3.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad(), FeatureTap(model.eval(), ["layer2", "layer2.0.conv1:in"]) as tap:
        model(x)
    calls.clear()
    assert torch.equal(layer_features(model, "layer2", x), tap["layer2"])
    assert torch.equal(layer_features(model, "layer2.0.conv1:in", x), tap["layer2.0.conv1:in"])
    handle.remove()
    assert calls == []
