"""Model zoo: shapes, stages, pre-activations, published sizes, torchvision adapter, summaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdscope.features import FeatureTap
from kdscope.models import (
    classifier_of,
    create_model,
    describe,
    list_models,
    model_summary,
    zoo_table,
)
from kdscope.registry import UnknownNameError

ZOO = list_models(task="classification", inputs="image")
# The downsampling nets whose stage outputs ReLU(pre-activation) exactly.
RELU_OF_PREACT = ["resnet8", "resnet8x4", "vgg8", "alexnet_small", "mlp"]


def _capture(model: nn.Module, layers: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad(), FeatureTap(model, layers, detach=True) as tap:
        out = model(x)
    assert out.shape == (x.shape[0], 10)
    assert torch.isfinite(out).all()
    return tap.ordered()


def _check_features(model: nn.Module, x: torch.Tensor) -> None:
    k = len(list(describe(model).stages))
    captured = _capture(model, list(describe(model).stages) + list(describe(model).preact), x)
    feats, pre = captured[:k], captured[k:]
    spatial = [f.shape[-2:] for f in feats if f.dim() == 4]
    for bigger, smaller in zip(spatial, spatial[1:], strict=False):
        assert smaller[0] <= bigger[0] and smaller[1] <= bigger[1], spatial
    if pre:
        assert [p.shape for p in pre] == [f.shape for f in feats]
        assert all((p < 0).any() for p in pre), "pre-activations should not be rectified"


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_builds_runs_and_exposes_its_stages(name):
    torch.manual_seed(0)
    gray = create_model(name, 10, in_channels=1)
    assert list(describe(gray).stages) and isinstance(list(describe(gray).preact), list)
    assert classifier_of(gray) is gray.classifier
    assert gray.classifier.out_features == 10
    for size in (28, 8):
        _check_features(gray, torch.randn(2, 1, size, size))
    rgb = create_model(name, 10, in_channels=3)
    _check_features(rgb, torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", RELU_OF_PREACT)
def test_stage_output_is_relu_of_preact(name):
    model = create_model(name, 10, in_channels=3)
    x = torch.randn(4, 3, 32, 32)
    k = len(list(describe(model).stages))
    captured = _capture(model, list(describe(model).stages) + list(describe(model).preact), x)
    for f, p in zip(captured[:k], captured[k:], strict=True):
        torch.testing.assert_close(f, torch.relu(p))


def test_wrn_preact_is_the_next_bn_of_the_stage_output():
    model = create_model("wrn_16_2", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    captured = _capture(model, list(describe(model).stages) + list(describe(model).preact), x)
    bns = [model.block2[0].bn1, model.block3[0].bn1, model.bn]
    for f, p, bn in zip(captured[:3], captured[3:], bns, strict=True):
        torch.testing.assert_close(p, bn(f))


def test_mobilenetv2_group_outputs_are_linear_and_width_scales():
    model = create_model("mobilenetv2", 10)
    assert (
        list(describe(model).preact)
        == list(describe(model).stages)
        == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    )
    assert isinstance(model.blocks[6][-1].conv[-1], nn.BatchNorm2d)
    wide = create_model("mobilenetv2", 10, width_mult=1.0)
    assert wide.blocks[6][-1].conv[-1].num_features == 320
    assert model.blocks[6][-1].conv[-1].num_features == 160


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cifar_resnet_params(depth: int, widths: tuple[int, ...], num_classes: int) -> int:
    """Closed form: 3x3 convs without bias, BN (2 per channel), 1x1 conv + BN shortcuts."""
    n = (depth - 2) // 6
    total = 9 * 3 * widths[0] + 2 * widths[0]
    c_in = widths[0]
    for c in widths[1:]:
        for i in range(n):
            cin = c_in if i == 0 else c
            total += 9 * cin * c + 9 * c * c + 4 * c
            if cin != c:
                total += cin * c + 2 * c
        c_in = c
    return total + widths[-1] * num_classes + num_classes


@pytest.mark.parametrize(
    ("name", "depth", "widths"),
    [
        ("resnet8", 8, (16, 16, 32, 64)),
        ("resnet20", 20, (16, 16, 32, 64)),
        ("resnet110", 110, (16, 16, 32, 64)),
        ("resnet8x4", 8, (32, 64, 128, 256)),
        ("resnet32x4", 32, (32, 64, 128, 256)),
    ],
)
def test_cifar_resnet_params_match_closed_form(name, depth, widths):
    assert _count(create_model(name, 100)) == _cifar_resnet_params(depth, widths, 100)


# Parameter counts at CIFAR-100 in millions as tabulated by the CRD line of work (CRD, DKD and
# mdistiller tables); the exact integers are those of CRD's definitions.
PUBLISHED_CIFAR100 = {
    "resnet20": (0.28, 278_324),
    "resnet32": (0.47, 472_756),
    "resnet56": (0.86, 861_620),
    "resnet8x4": (1.23, 1_233_540),
    "resnet32x4": (7.43, 7_433_860),
    "wrn_16_2": (0.70, 703_284),
    "wrn_40_1": (0.57, 569_780),
    "wrn_40_2": (2.25, 2_255_156),
    "vgg8": (3.96, 3_965_028),
    "vgg13": (9.46, 9_462_180),
    "mobilenetv2": (0.81, 812_836),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CIFAR100))
def test_param_counts_match_published(name):
    millions, exact = PUBLISHED_CIFAR100[name]
    params = _count(create_model(name, 100))
    assert params == exact
    assert abs(params / 1e6 - millions) < 0.006


def test_resnet20_has_the_cifar10_size_of_he_et_al():
    assert _count(create_model("resnet20", 10)) == 272_474  # "0.27M" in He et al. 2016, Table 6


def test_summary_counts_multiply_adds():
    # resnet8 at 32x32, 10 classes, by hand: stem + 3 stages of one block (+ 1x1 shortcuts) + fc.
    hw = [32 * 32, 16 * 16, 8 * 8]
    macs = 3 * 16 * 9 * hw[0] + 2 * 16 * 16 * 9 * hw[0]
    macs += 16 * 32 * 9 * hw[1] + 32 * 32 * 9 * hw[1] + 16 * 32 * hw[1]
    macs += 32 * 64 * 9 * hw[2] + 64 * 64 * 9 * hw[2] + 32 * 64 * hw[2]
    macs += 64 * 10
    s = model_summary("resnet8", num_classes=10, in_channels=3, input_size=32)
    assert s["name"] == "resnet8"
    assert s["macs"] == macs and s["flops"] == 2 * macs
    assert s["params"] == _cifar_resnet_params(8, (16, 16, 32, 64), 10)
    assert s["features"] == {"layer1": [16, 32, 32], "layer2": [32, 16, 16], "layer3": [64, 8, 8]}
    # Published CIFAR cost of resnet56: 125.75M multiply-adds.
    assert round(model_summary("resnet56", 100)["macs"] / 1e6, 2) == 125.75


def test_summary_of_a_model_keeps_its_mode():
    model = create_model("wrn_16_1", 10, in_channels=1)
    s = model_summary(model, num_classes=10, in_channels=1, input_size=28)
    assert model.training and s["name"] == "wrn_16_1"
    assert s["features"]["block3"] == [64, 7, 7]


def test_zoo_table_summarises_every_zoo_model(monkeypatch):
    # Two models stand in for the zoo to keep the test fast; the row is the model's summary.
    monkeypatch.setattr("kdscope.models.summary.list_models", lambda **_: ["mlp", "resnet8"])
    table = zoo_table(num_classes=10, in_channels=1, input_size=8)
    assert [row["name"] for row in table] == ["mlp", "resnet8"]
    assert table[1] == model_summary("resnet8", num_classes=10, in_channels=1, input_size=8)


def test_mlp_input_size_and_errors():
    model = create_model("mlp", 10, in_channels=1, input_size=28, hidden_sizes=[64])
    assert model.hidden.fc1.linear.in_features == 784
    assert list(describe(model).stages) == ["hidden.fc1"]
    with pytest.raises(ValueError, match="hidden_sizes"):
        create_model("mlp", 10, hidden_sizes=[])


def test_unknown_zoo_name_suggests_close_ones():
    with pytest.raises(UnknownNameError, match="resnet20"):
        create_model("resnet21", 10)


def test_bad_depth_is_rejected():
    from kdscope.models.resnet import CifarResNet
    from kdscope.models.wrn import WideResNet

    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21, (16, 16, 32, 64), 10)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(17, 1, 10)


# torchvision adapter


def test_tv_resnet18_small_input_stem_and_stages():
    model = create_model("tv:resnet18", 10, in_channels=1)
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert list(describe(model).stages) == ["layer1", "layer2", "layer3", "layer4"]
    assert list(describe(model).preact) == [] and classifier_of(model) is model.fc
    feats = _capture(model, list(describe(model).stages), torch.randn(2, 1, 28, 28))
    assert [f.shape[-1] for f in feats] == [28, 14, 7, 4]
    _capture(model, list(describe(model).stages), torch.randn(2, 1, 8, 8))


def test_tv_resnet18_imagenet_stem_kept_without_small_input():
    model = create_model("tv:resnet18", 10, in_channels=1, small_input=False)
    assert model.conv1.in_channels == 1 and model.conv1.kernel_size == (7, 7)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    feats = _capture(model, list(describe(model).stages), torch.randn(2, 1, 64, 64))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]


def test_tv_vgg11_bn_stages_are_the_relus_before_each_pool():
    model = create_model("tv:vgg11_bn", 10, in_channels=1)
    pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
    assert list(describe(model).stages) == [f"features.{i - 1}" for i in pools]
    assert model.features[0].in_channels == 1
    assert classifier_of(model) is model.classifier[6]
    for size in (28, 8):
        _check_features(model, torch.randn(2, 1, size, size))


def test_tv_mobilenet_v3_small_stages():
    model = create_model("tv:mobilenet_v3_small", 10, in_channels=3)
    assert list(describe(model).stages) == [
        "features.0", "features.1", "features.3", "features.8", "features.12"
    ]  # fmt: skip
    feats = _capture(model, list(describe(model).stages), torch.randn(2, 3, 32, 32))
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2, 1]
    assert describe(model).spec.name == "tv:mobilenet_v3_small"


def test_tv_unknown_name_lists_close_names():
    with pytest.raises(UnknownNameError, match="resnet18"):
        create_model("tv:resnet19", 10)


def test_tv_feature_layers_override_and_missing_classifier():
    model = create_model("tv:squeezenet1_1", 10, stages=["features.12"])
    assert list(describe(model).stages) == ["features.12"]
    with pytest.raises(ValueError, match="no linear classifier"):
        classifier_of(model)
