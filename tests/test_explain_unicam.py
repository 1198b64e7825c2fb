import copy

import pytest
import torch
from torch import nn

from kdscope.explain.gradcam import grad_cam
from kdscope.explain.unicam import unicam
from kdscope.features import FeatureTap
from kdscope.metrics.dcor import semipartial_distance_correlation
from kdscope.models import create_model


def model(seed: int, name: str = "resnet8") -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=4, in_channels=1)


def batch(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.arange(n) % 4


EMBEDDINGS = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))


def features(net, layer, x):
    with torch.no_grad(), FeatureTap(net.eval(), [layer], detach=True) as tap:
        net(x)
    return tap[layer]


def test_maps_are_grad_cam_of_the_semipartial_dcor_objective():
    student, base = model(0), model(1)
    x, y = batch()
    result = unicam(student, base, "layer2", x, y, EMBEDDINGS)
    e = EMBEDDINGS[y].double()
    f_s, f_b = features(student, "layer2", x), features(base, "layer2", x)

    def distilled(_logits, acts):
        return semipartial_distance_correlation(acts, e, f_b)

    def residual(_logits, acts):
        return semipartial_distance_correlation(acts, e, f_s)

    assert torch.allclose(result.distilled, grad_cam(student, "layer2", x, distilled), atol=1e-6)
    assert torch.allclose(result.residual, grad_cam(base, "layer2", x, residual), atol=1e-6)
    expected = semipartial_distance_correlation(f_s, e, f_b).item()
    assert result.objective_distilled == pytest.approx(expected, rel=1e-9)
    assert not result.empty and 0 < result.unique_fraction <= 1
    for maps in (result.distilled, result.residual):
        assert maps.shape == (12, 16, 16)
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert maps.flatten(1).max(1).values.sum() > 0


def test_identical_copy_has_no_unique_features():
    student = model(0)
    x, y = batch()
    result = unicam(student, copy.deepcopy(student), "layer3", x, y, EMBEDDINGS)
    assert result.empty
    assert result.unique_fraction <= 1e-10
    assert result.objective_distilled == 0.0 and result.objective_residual == 0.0
    assert (result.distilled == 0).all() and (result.residual == 0).all()


def test_single_class_batch_is_refused():
    x, _ = batch()
    with pytest.raises(ValueError, match="at least 2 classes"):
        unicam(model(0), model(1), "layer3", x, torch.full((12,), 2), EMBEDDINGS)


def test_bad_batches_and_embeddings_are_refused():
    x, y = batch()
    with pytest.raises(ValueError, match="at least 4 examples"):
        unicam(model(0), model(1), "layer3", x[:3], y[:3], EMBEDDINGS)
    with pytest.raises(ValueError, match="11 labels for a batch of 12"):
        unicam(model(0), model(1), "layer3", x, y[:11], EMBEDDINGS)
    with pytest.raises(ValueError, match="index the 3 rows"):
        unicam(model(0), model(1), "layer3", x, y, EMBEDDINGS[:3])


def test_different_layers_and_architectures_as_a_teacher():
    student, teacher = model(0), model(1, "resnet14")
    x, y = batch()
    result = unicam(
        student, teacher, ("layer2", "layer3"), x, y, EMBEDDINGS, indices=torch.arange(12) + 100
    )
    assert result.distilled.shape == result.residual.shape == (12, 16, 16)
    assert not torch.allclose(result.distilled, result.residual)
    composition = result.composition()
    assert composition == {
        "size": 12,
        "class_counts": {0: 3, 1: 3, 2: 3, 3: 3},
        "indices": list(range(100, 112)),
    }


def test_maps_depend_on_the_batch_they_are_computed_in():
    student, base = model(0), model(1)
    x, y = batch(12)
    x2, y2 = batch(12, seed=1)
    alone = unicam(student, base, "layer2", x, y, EMBEDDINGS).distilled
    mixed = unicam(
        student, base, "layer2", torch.cat([x[:6], x2[6:]]), torch.cat([y[:6], y2[6:]]), EMBEDDINGS
    )
    assert not torch.allclose(alone[:6], mixed.distilled[:6])
