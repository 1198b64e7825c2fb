import pytest
import torch
from torch import nn

from kdscope.features import FeatureTap, UnknownLayerError, layer_shapes, pair_layers
from kdscope.registry import Registry, UnknownNameError


def test_registry_lists_valid_names_and_suggests():
    reg = Registry("widget")
    reg.register("resnet8")(object)
    reg.register("resnet20")(object)
    with pytest.raises(UnknownNameError) as err:
        reg.get("resnet80")
    msg = str(err.value)
    assert "'resnet80'" in msg and "Did you mean" in msg and "resnet20, resnet8" in msg


def test_registry_refuses_duplicates():
    reg = Registry("widget")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(object)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


def test_tap_captures_outputs_inputs_and_removes_hooks():
    net = Net()
    x = torch.randn(5, 4)
    with FeatureTap(net, ["body.0", "body.1:in", "body.2"], detach=True) as tap:
        y = net(x)
    assert torch.equal(tap["body.2"], y)
    assert torch.equal(tap["body.0"], tap["body.1:in"])
    assert not tap["body.0"].requires_grad
    assert all(not m._forward_hooks for m in net.modules())


def test_tap_keeps_graph_or_grad():
    net = Net()
    with FeatureTap(net, ["body.0"]) as tap:
        net(torch.randn(2, 4)).sum().backward()
    assert tap["body.0"].requires_grad
    with FeatureTap(net, ["body.0"], keep_grad=True) as tap:
        net(torch.randn(2, 4)).sum().backward()
    assert tap["body.0"].grad is not None and tap["body.0"].grad.shape == (2, 8)


def test_tap_unknown_layer_suggests_close_names():
    with pytest.raises(UnknownLayerError, match="body.0"):
        FeatureTap(Net(), ["body.O"])


def test_tap_sees_through_ddp_style_wrappers():
    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    net = Net()
    with FeatureTap(Wrapper(net), ["body.2"]) as tap:
        Wrapper(net)(torch.randn(1, 4))
    assert tap["body.2"].shape == (1, 3)


def test_pair_layers_by_relative_depth():
    assert pair_layers(["a", "b", "c"], ["x", "y", "z"]) == [("a", "x"), ("b", "y"), ("c", "z")]
    assert pair_layers(["a", "b"], ["w", "x", "y", "z"]) == [("a", "x"), ("b", "z")]
    assert pair_layers(["a", "b", "c", "d"], ["x", "y"]) == [("b", "x"), ("d", "y")]
    with pytest.raises(ValueError):
        pair_layers([], ["x"])


def test_layer_shapes_reports_outputs_and_restores_mode():
    from kdscope.models import create_model

    model = create_model("resnet8", 10, 1).train()
    shapes = layer_shapes(model, ["layer1", "layer3", "classifier"], torch.zeros(2, 1, 28, 28))
    assert shapes == {"layer1": (2, 16, 28, 28), "layer3": (2, 64, 7, 7), "classifier": (2, 10)}
    assert model.training
    assert layer_shapes(None, ["layer1"], torch.zeros(1)) == {}
    assert layer_shapes(model, [], torch.zeros(1)) == {}
