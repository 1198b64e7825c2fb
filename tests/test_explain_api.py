import json

import pytest
import torch

from kdscope.data import load_data
from kdscope.explain import explain_student
from kdscope.models import create_model


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def model(seed, data, name="resnet8"):
    torch.manual_seed(seed)
    return create_model(name, data.num_classes, data.in_channels)


def test_explain_writes_figures_and_relevance_json(tmp_path, digits):
    student, base, teacher = model(0, digits), model(1, digits), model(2, digits, "resnet14")
    embeddings = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    report = explain_student(
        student,
        base,
        digits,
        teacher=teacher,
        layers=["layer3"],
        num_images=6,
        out_dir=tmp_path,
        embeddings=embeddings,
        batch_size=16,
        max_batches=1,
    )
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert names == {
        "explanations.png",
        "relevance.png",
        "explanations_teacher.png",
        "relevance_teacher.png",
    }
    saved = json.loads((tmp_path / "relevance.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["label_embeddings"] == "given matrix"
    assert saved["figure_batch"]["size"] == 6
    assert len(saved["figure_batch"]["class_counts"]) == 6  # one image per class, round-robin
    for role in ("base", "teacher"):
        assert list(saved[role]["layers"]) == ["layer3|layer3"]
        assert saved[role]["batches_used"] == 1
    assert student.training  # modes restored


def test_explain_rejects_bad_arguments(tmp_path, digits):
    student, base = model(0, digits), model(1, digits)
    with pytest.raises(TypeError, match="DataBundle"):
        explain_student(student, base, digits.test, out_dir=tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        explain_student(student, base, digits, split="dev", out_dir=tmp_path)
    with pytest.raises(ValueError, match="num_images must be >= 4"):
        explain_student(student, base, digits, num_images=2, out_dir=tmp_path)
