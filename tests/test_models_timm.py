"""timm:<name> models: ModelInfo from timm's feature_info, never any weights, and runs through the
config path as teacher and student."""

import pytest
import torch

from kdscope.api import run
from kdscope.config import build_config
from kdscope.features import FeatureTap
from kdscope.models import create_model, describe
from kdscope.registry import UnknownNameError

timm = pytest.importorskip("timm", reason="the optional timm extra is not installed")

TINY_VIT = {"img_size": 8, "patch_size": 2, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_resnet_stages_are_timm_feature_maps():
    torch.manual_seed(0)
    model = create_model("timm:resnet10t", 10, 1).eval()
    info = describe(model)
    reference = timm.create_model(
        "resnet10t", pretrained=False, in_chans=1, features_only=True
    ).eval()
    assert info.stages == tuple(reference.feature_info.module_name())
    assert info.channels == tuple(reference.feature_info.channels())
    assert info.reductions == tuple(reference.feature_info.reduction())
    assert (info.classifier, info.num_classes, info.in_channels) == ("fc", 10, 1)
    assert info.spec.name == "timm:resnet10t"
    missing, _ = reference.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad(), FeatureTap(model, info.stages, detach=True) as tap:
        assert model(x).shape == (3, 10)
        maps = reference(x)
    for stage, want in zip(info.stages, maps, strict=True):
        assert torch.equal(tap[stage], want)


def test_vit_stages_are_its_blocks_and_bad_names_are_refused():
    info = describe(create_model("timm:vit_tiny_patch16_224", 10, 1, **TINY_VIT))
    assert info.stages == ("blocks.0", "blocks.1")
    assert info.channels == (32, 32) and info.classifier == "head"
    with pytest.raises(UnknownNameError, match=r"Did you mean .*'resnet10t'"):
        create_model("timm:resnet10", 10, 1)
    with pytest.raises(ValueError, match="built without weights"):
        create_model("timm:resnet10t", 10, 1, pretrained=True)


def test_timm_teacher_and_student_distill_on_digits(tmp_path):
    data = {"name": "digits", "train_size": 128}
    common = {"out_dir": str(tmp_path), "data": data}
    train = {"epochs": 1, "device": "cpu", "amp": False}
    teacher = run(
        build_config(
            {**common, "name": "t", "student": {"name": "timm:resnet10t"}, "train": train}
        ),
        progress=False,
    )
    student = {"name": "timm:vit_tiny_patch16_224", "kwargs": TINY_VIT}
    result = run(
        build_config(
            {
                **common,
                "name": "s",
                "student": student,
                "teacher": {"name": "timm:resnet10t", "checkpoint": str(teacher.run_dir)},
                "method": {"name": "kd"},
                "train": {**train, "probe": 16},
            }
        ),
        progress=False,
    )
    record = result.fit.history[-1]
    assert 0 <= result.test_acc <= 1 and record["terms"]["kd"] > 0
    assert {"probe_cka/blocks.0", "probe_cka/blocks.1"} <= set(record)
