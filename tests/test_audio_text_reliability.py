"""The teacher cache, resume after Ctrl-C and DDP on small real subsets of FSDD and SST-2."""

from pathlib import Path

import pytest
import torch

from _interrupt import InterruptAt
from _subsets import real_subset
from kdscope.config import DataConfig, TrainConfig
from kdscope.data import load_data
from kdscope.features import FeatureTap
from kdscope.metrics.similarity import linear_gram
from kdscope.models import create_model, describe
from kdscope.train import Trainer
from kdscope.train.probe import Probe


def _models(name: str, vocab: int):
    torch.manual_seed(0)
    if name == "fsdd":
        return create_model("resnet8", 10, 1), create_model("resnet8", 10, 1)
    teacher = create_model("textcnn", 2, vocab, embed_dim=16, filters=8)
    student = create_model("bilstm", 2, vocab, embed_dim=16, hidden_size=8, mlp_size=8)
    return teacher, student


@pytest.fixture(scope="module", params=["fsdd", "sst2"])
def subset(request, tmp_path_factory):
    name = request.param
    folder = real_subset(name, tmp_path_factory.mktemp(name))
    return name, folder, load_data(name, data_dir=folder, train_size=40)


def _fit(name, data, run_dir=None, resume=False, train_set=None):
    teacher, student = _models(name, data.in_channels)
    trainer = Trainer(
        student,
        train_set or data.train,
        data.val,
        teacher=teacher.eval(),
        method="kd",
        data=DataConfig(batch_size=10),
        train=TrainConfig(epochs=2, seed=0, device="cpu"),
        run_dir=run_dir,
        progress=False,
    )
    return trainer, trainer.fit(resume=resume)


def test_the_cache_holds_each_examples_teacher_outputs_by_index(subset):
    name, _, data = subset
    trainer, result = _fit(name, data)
    assert result.cache == "memory"
    teacher = trainer.teacher
    for i in (0, 7, len(data.train) - 1):
        x = data.train[i][0].unsqueeze(0)  # alone: an SST-2 example without any padding
        with torch.no_grad():
            expected = teacher(x)[0]
        assert torch.allclose(trainer.cache.logits[i], expected, atol=1e-5)


def test_ctrl_c_and_resume_end_with_the_uninterrupted_weights(subset, tmp_path):
    name, _, data = subset
    reference, _ = _fit(name, data)
    with pytest.raises(KeyboardInterrupt):
        _fit(name, data, tmp_path, train_set=InterruptAt(data.train, at=7))
    resumed, result = _fit(name, data, tmp_path, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2]
    ref, res = reference.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(ref[k], res[k]) for k in ref)


def test_the_probe_compares_examples_not_padded_tokens(subset):
    """The probe's teacher Gram matrices are those of each example's features computed alone:
    flattened for spectrograms, a sentence's mean over its (unpadded) tokens for SST-2."""
    name, _, data = subset
    teacher, student = _models(name, data.in_channels)
    teacher.eval()
    probe = Probe(teacher, student, data.val, 8, 0, device=torch.device("cpu"))
    layer = describe(teacher).stages[-1]
    rows = []
    with torch.no_grad(), FeatureTap(teacher, [layer], detach=True) as tap:
        for i in probe.indices.tolist():
            teacher(data.val[i][0].unsqueeze(0))  # alone: no padding
            f = tap[layer][0]
            rows.append(f.mean(0) if name == "sst2" else f.flatten())
    (chunk,) = probe.chunks
    expected = linear_gram(torch.stack(rows))
    assert torch.allclose(chunk.teacher_grams[layer], expected, rtol=1e-4, atol=1e-5)
    assert set(probe.score(student)) >= {"probe_agree_all", "probe_aoa"}


def test_ddp_two_ranks_agree_on_both_data_sets(tmp_path, torchrun):
    folders = {name: real_subset(name, tmp_path / name) for name in ("fsdd", "sst2")}
    worker = Path(__file__).with_name("ddp_audio_text_worker.py")
    torchrun(worker, tmp_path, *(f"{name}={folder}" for name, folder in folders.items()))
    for name in folders:
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in (0, 1)]
        assert torch.equal(ranks[0]["cache"], ranks[1]["cache"]), name
        weights = [{k: v for k, v in r["student"].items() if "running" not in k} for r in ranks]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), name
