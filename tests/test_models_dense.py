"""FCN segmenters and FCOS detectors on CIFAR ResNets: shapes, contract, short training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from kdscope.data import fashion_mnist
from kdscope.data.dense import flatten_boxes
from kdscope.data.fashion_mnist import read_idx
from kdscope.data.scenes import generate_scenes
from kdscope.features import FeatureTap
from kdscope.models.detection import FCOSDetector, fcos_resnet8, fcos_resnet20
from kdscope.models.info import describe
from kdscope.models.registry import MODELS, create_model
from kdscope.models.segmentation import FCN, fcn_resnet8, fcn_resnet20

CLASSES = 11


@pytest.fixture(scope="module")
def scenes():
    """16 real 64x64 scenes (normalised images, masks, box targets)."""
    folder = fashion_mnist.DEBIAN_DIR
    if not folder.is_dir():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) not installed")
    images = read_idx(folder / "t10k-images-idx3-ubyte.gz")[:500]
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")[:500].astype(np.int64)
    s = generate_scenes(images, labels, count=16, seed=0)
    x = (torch.from_numpy(s.images).float() / 255 - 0.1) / 0.25
    boxes, box_labels, offsets = flatten_boxes([s.boxes_of(i) for i in range(16)])
    targets = [
        {"boxes": boxes[a:b], "labels": box_labels[a:b]}
        for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
    ]
    return x, torch.from_numpy(s.masks).long(), targets


def test_registered():
    for name in ("fcn_resnet8", "fcn_resnet20", "fcn_resnet32x4", "fcos_resnet8", "fcos_resnet20"):
        assert name in MODELS
    assert isinstance(create_model("fcn_resnet20", CLASSES, 1), FCN)
    assert isinstance(create_model("fcos_resnet8", CLASSES, 1), FCOSDetector)


def test_fcn_output_and_contract():
    model = fcn_resnet8(CLASSES, in_channels=1).eval()
    info = describe(model)
    assert info.output == "pixels" and info.num_classes == CLASSES and info.in_channels == 1
    assert info.stages == ("backbone.layer1", "backbone.layer2", "backbone.layer3")
    assert info.class_dim == 1
    x = torch.randn(2, 1, 64, 64)
    with FeatureTap(model, [*info.stages, *info.preact], detach=True) as tap, torch.no_grad():
        out = model(x)
    assert out.shape == (2, CLASSES, 64, 64)
    shapes = [tuple(tap[s].shape) for s in info.stages]
    assert shapes == [(2, 16, 64, 64), (2, 32, 32, 32), (2, 64, 16, 16)]
    assert [tuple(tap[p].shape) for p in info.preact] == shapes
    # Any input size: logits come back at the input's size.
    assert model(torch.randn(1, 1, 40, 52)).shape == (1, CLASSES, 40, 52)
    # No pooling or linear classifier left over from the backbone (DDP would see it unused).
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_fcn_skips_sum_upsampled_scores():
    model = fcn_resnet20(5, in_channels=3).eval()
    x = torch.randn(2, 3, 32, 32)

    def by_hand() -> torch.Tensor:
        with FeatureTap(model, describe(model).stages, detach=True) as tap, torch.no_grad():
            out = model(x)
        f1, f2, f3 = tap.ordered()
        up = lambda t, f: F.interpolate(t, size=f.shape[-2:], mode="bilinear")  # noqa: E731
        scores = up(model.score(f3), f2) + model.skips[1](f2)
        scores = up(scores, f1) + model.skips[0](f1)
        return out, up(scores, x)

    # FCN-8s initialises the skip scorers at zero: the net starts as the last stage's scores.
    assert all(not p.detach().any() for p in model.skips.parameters())
    out, expected = by_hand()
    torch.testing.assert_close(out, expected)
    for p in model.skips.parameters():
        torch.nn.init.normal_(p)
    out_after, expected = by_hand()
    torch.testing.assert_close(out_after, expected)
    assert not torch.allclose(out_after, out)


def test_fcn_short_training_lowers_the_loss(scenes):
    torch.manual_seed(0)
    x, masks, _ = scenes
    model = fcn_resnet8(CLASSES, in_channels=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), masks, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_fcos_contract_and_taps():
    model = fcos_resnet8(CLASSES, in_channels=1).eval()
    info = describe(model)
    assert info.output == "detections" and info.num_classes == CLASSES
    assert info.stages == tuple(f"detector.backbone.body.layer{i}" for i in (1, 2, 3))
    x = torch.randn(3, 1, 64, 64)
    layers = [*info.stages, *info.levels, model.class_logits_layer]
    with FeatureTap(model, layers, detach=True) as tap, torch.no_grad():
        detections = model(x)
    assert [tuple(tap[f].shape) for f in info.levels] == [(3, 64, 32, 32), (3, 64, 16, 16)]
    logits = tap[model.class_logits_layer]
    assert logits.shape == (3, 32 * 32 + 16 * 16, CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(model.class_logits(x), logits)
    assert isinstance(detections, list) and len(detections) == 3
    for d in detections:
        assert set(d) == {"boxes", "scores", "labels"}
        assert ((d["boxes"] >= 0) & (d["boxes"] <= 64)).all() and (d["scores"] >= 0.05).all()


def test_fcos_input_is_neither_normalised_nor_resized():
    model = fcos_resnet20(CLASSES, in_channels=1).eval()
    x = torch.randn(2, 1, 48, 40) * 5 + 3
    tap = FeatureTap(model, ["detector.backbone.body.conv1:in"], detach=True)
    with tap, torch.no_grad():
        detections = model(x)
    torch.testing.assert_close(tap["detector.backbone.body.conv1:in"], x, rtol=0, atol=0)
    for d in detections:
        assert (d["boxes"][:, 0::2] <= 40).all() and (d["boxes"][:, 1::2] <= 48).all()


def test_fcos_short_training_lowers_the_loss(scenes):
    torch.manual_seed(0)
    x, _, targets = scenes
    targets = [dict(t) for t in targets]
    targets[3] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    model = fcos_resnet8(CLASSES, in_channels=1).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    totals = []
    for _ in range(8):
        losses = model(x[:8], targets[:8])
        assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals


def test_fcos_errors():
    model = fcos_resnet8(CLASSES, in_channels=1).train()
    with pytest.raises(ValueError, match="one target dict per image"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(1, 64, 64), [])
    with pytest.raises(ValueError, match="num_classes counts the background"):
        fcos_resnet8(1, in_channels=1)
