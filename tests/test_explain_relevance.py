import copy
import json

import pytest
import torch

from kdscope.explain.relevance import (
    default_layer_pairs,
    normalize,
    perturbed_relevance,
    unnormalize,
)
from kdscope.features import FeatureTap
from kdscope.metrics.dcor import u_distance_correlation_sqr
from kdscope.models import create_model

MEAN, STD = [0.4], [0.3]
EMBEDDINGS = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))


def model(seed: int):
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=4, in_channels=1).eval()


def batches(count: int = 2, n: int = 8):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        images = torch.rand(n, 1, 12, 12, generator=g)
        out.append((normalize(images, MEAN, STD), torch.arange(n) % 4, torch.arange(n) + i * n))
    return out


def features(net, layer, x):
    with torch.no_grad(), FeatureTap(net, [layer], detach=True) as tap:
        net(x)
    return tap[layer]


def test_keeping_every_pixel_gives_plain_dcor_of_the_features():
    student, base = model(0), model(1)
    data = batches(1)
    result = perturbed_relevance(
        student,
        base,
        data,
        EMBEDDINGS,
        layers=[("layer2", "layer3")],
        keep_fraction=1.0,
        mean=MEAN,
        std=STD,
    )
    scores = result.layers[0].scores
    for i, (x, y, _) in enumerate(data):
        f_s, f_b = features(student, "layer2", x), features(base, "layer3", x)
        e = EMBEDDINGS[y]
        fss = u_distance_correlation_sqr(f_s, f_b).item()
        rs_s, rs_b = (
            u_distance_correlation_sqr(f_s, e).item(),
            u_distance_correlation_sqr(f_b, e).item(),
        )
        for kind, names in (
            ("gradcam", ("rs_student", "rs_base")),
            ("unicam", ("rs_distilled", "rs_residual")),
        ):
            assert scores[kind]["fss"][i] == pytest.approx(fss, abs=1e-5)
            assert scores[kind][names[0]][i] == pytest.approx(rs_s, abs=1e-5)
            assert scores[kind][names[1]][i] == pytest.approx(rs_b, abs=1e-5)


def test_perturbation_changes_the_scores_and_is_seeded():
    student, base = model(0), model(1)
    kwargs = dict(layers=[("layer3", "layer3")], keep_fraction=0.3, mean=MEAN, std=STD)
    half = perturbed_relevance(student, base, batches(1), EMBEDDINGS, **kwargs)
    again = perturbed_relevance(student, base, batches(1), EMBEDDINGS, **kwargs)
    x = batches(1)[0][0]
    full = u_distance_correlation_sqr(features(student, "layer3", x), features(base, "layer3", x))
    fss = [r.layers[0].scores["gradcam"]["fss"][0] for r in (half, again)]
    assert fss[0] == fss[1]
    assert fss[0] != pytest.approx(full.item(), abs=1e-3)


def test_skipped_batches_are_listed_and_json_is_complete():
    data = batches(2) + [(torch.randn(8, 1, 12, 12), torch.full((8,), 1), torch.arange(8))]
    data.insert(1, (torch.randn(3, 1, 12, 12), torch.arange(3), torch.arange(3)))
    layers = [("layer3", "layer3")]
    result = perturbed_relevance(model(0), model(1), data, EMBEDDINGS, layers, mean=MEAN, std=STD)
    report = json.loads(json.dumps(result.to_dict()))
    assert report["batches_used"] == 2
    assert [s["batch"] for s in report["batches_skipped"]] == [1, 3]
    assert "single class" in report["batches_skipped"][1]["reason"]
    assert "bias-corrected" in report["estimator"]
    assert report["perturbation"]["keep_fraction"] == 0.5
    assert list(report["layers"]) == ["layer3|layer3"]
    layer = report["layers"]["layer3|layer3"]
    for kind, names in (
        ("gradcam", ("fss", "rs_student", "rs_base")),
        ("unicam", ("fss", "rs_distilled", "rs_residual")),
    ):
        for name in names:
            summary = layer[kind][name]
            assert summary["n"] == 2 and len(summary["per_batch"]) == 2
            assert summary["mean"] == pytest.approx(sum(summary["per_batch"]) / 2)
    assert report["batch_compositions"][0] == {
        "batch": 0,
        "size": 8,
        "class_counts": {"0": 2, "1": 2, "2": 2, "3": 2},
        "indices": list(range(8)),
    }


def test_identical_copy_leaves_unicam_scores_empty_and_max_batches_stops():
    student = model(0)
    result = perturbed_relevance(
        student,
        copy.deepcopy(student),
        batches(3),
        EMBEDDINGS,
        layers=[("layer3", "layer3")],
        max_batches=2,
        mean=MEAN,
        std=STD,
    )
    layer = result.to_dict()["layers"]["layer3|layer3"]
    assert result.batches_used == [0, 1]
    assert layer["unicam_empty_batches"] == [0, 1]
    assert layer["unicam"]["fss"] == {"mean": None, "std": None, "n": 0, "per_batch": []}
    assert layer["gradcam"]["fss"]["n"] == 2


def test_v_statistic_estimator_and_bad_estimator():
    result = perturbed_relevance(
        model(0),
        model(1),
        batches(1),
        EMBEDDINGS,
        layers=[("layer3", "layer3")],
        estimator="v_statistic",
    )
    values = [v[0] for named in result.layers[0].scores.values() for v in named.values()]
    assert all(0 <= v <= 1 for v in values)
    assert "V-statistic" in result.estimator
    with pytest.raises(ValueError, match="estimator must be one of"):
        perturbed_relevance(model(0), model(1), batches(1), EMBEDDINGS, estimator="u")


def test_normalize_round_trip():
    x = torch.rand(2, 3, 4, 4)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    assert torch.allclose(unnormalize(normalize(x, mean, std), mean, std), x, atol=1e-6)
    assert torch.equal(normalize(x, None, None), x)


def test_default_layers_pair_the_feature_layers_by_depth():
    student = model(0)
    teacher = create_model("resnet8x4", num_classes=4, in_channels=1)
    assert default_layer_pairs(student, teacher) == [(f"layer{i}", f"layer{i}") for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="declares no stages"):
        default_layer_pairs(student, torch.nn.Conv2d(1, 1, 1))


def test_relevance_rows_take_batch_means_and_mark_unmeasured():
    from kdscope.explain import RELEVANCE_COLUMNS, relevance_rows

    def stat(mean, n=2):
        return {"mean": mean, "std": 0.0, "n": n, "per_batch": [mean] * n}

    layer = {
        "student_layer": "layer2",
        "base_layer": "layer3",
        "gradcam": {"fss": stat(0.1), "rs_base": stat(0.2), "rs_student": stat(0.3)},
        "unicam": {"fss": stat(0.4), "rs_distilled": stat(0.5), "rs_residual": stat(None, n=0)},
    }
    rows = relevance_rows({"layers": {"layer2|layer3": layer}})
    assert rows == [
        {
            "layer": "layer2",
            **dict(zip(RELEVANCE_COLUMNS, [0.1, 0.2, 0.3, 0.4, 0.5, None], strict=True)),
        }
    ]
