"""The teacher's view cache (train.cache=views): the teacher outputs a student is given are the
teacher's outputs of the very view it sees, the bank is a pure function of the seed, and runs
resume bitwise, in memory, on disk and under DDP."""

from __future__ import annotations

import pytest
import torch

from _interrupt import InterruptAt
from kdscope.config import DataConfig, TrainConfig
from kdscope.data import CropFlip, get_augment
from kdscope.methods import Method, Needs
from kdscope.models import create_model
from kdscope.train import Trainer, read_checkpoint
from kdscope.train.cache import cache_mode
from kdscope.train.views import ViewBank

AUGMENT = get_augment("standard")


def test_every_view_of_crop_and_flip_is_enumerated_and_applied_exactly():
    aug = CropFlip()
    views = aug.enumerate((1, 8, 8))  # pad 1: 3 x 3 offsets x 2 flips
    assert views.shape == (18, 3) and len({tuple(v.tolist()) for v in views}) == 18
    x = torch.arange(64.0).view(1, 1, 8, 8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for dy, dx, flip in views.tolist():
        out = aug.apply(x, torch.tensor([[dy, dx, flip]]))
        crop = padded[..., dy : dy + 8, dx : dx + 8]
        assert torch.equal(out, crop.flip(-1) if flip else crop)
    # the random draws are the standard augmentation's, applied by parameter
    gen = torch.Generator().manual_seed(3)
    batch = torch.randn(5, 1, 8, 8)
    params = aug.sample(5, batch.shape, torch.Generator().manual_seed(3))
    assert torch.equal(aug(batch, gen), aug.apply(batch, params))


def test_a_bank_is_a_pure_function_of_the_seed():
    a, b = (ViewBank(AUGMENT, 3000, (1, 28, 28), 4, seed=7) for _ in range(2))
    assert torch.equal(a.params, b.params) and a.params.shape == (3000, 4, 3)
    assert not torch.equal(a.params, ViewBank(AUGMENT, 3000, (1, 28, 28), 4, seed=8).params)
    assert torch.equal(a.epoch_views(2), b.epoch_views(2))
    assert not torch.equal(a.epoch_views(2), a.epoch_views(3))
    every = ViewBank(AUGMENT, 10, (1, 28, 28), "all", seed=0)
    assert every.views == 7 * 7 * 2 and every.size == 980
    idx, view = torch.tensor([0, 9]), torch.tensor([5, 5])
    assert torch.equal(every.view_params(idx, view)[0], every.view_params(idx, view)[1])
    assert every.entry(torch.tensor([2]), torch.tensor([3])).item() == 2 * 98 + 3


def test_view_caching_needs_a_parametric_augmentation():
    with pytest.raises(ValueError, match="no augmentation"):
        cache_mode("views", needed=True, augmented=False)
    assert cache_mode("views", needed=True, augmented=True) == "views"
    with pytest.raises(ValueError, match="can name its views"):
        ViewBank(lambda x, g: x, 10, (1, 8, 8), 2, seed=0)


class _Record(Method):
    """kd's needs; records each step's inputs and the teacher logits the step was given."""

    def __init__(self):
        super().__init__(Needs(teacher_logits=True))
        self.seen = []

    def forward(self, out):
        self.seen.append((out.inputs.detach().clone(), out.teacher_logits.clone()))
        return {"zero": out.student_logits.sum() * 0.0}


def _trainer(digits, method, views=4, run_dir=None, train_set=None, store="memory", **train):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", 10, 1).eval(), create_model("resnet8", 10, 1)
    return teacher, Trainer(
        student,
        train_set or digits.train,
        digits.val,
        teacher=teacher,
        method=method,
        augment=AUGMENT,
        data=DataConfig(batch_size=32, eval_batch_size=64),
        train=TrainConfig(epochs=2, cache="views", views=views, view_store=store, seed=5, **train),
        run_dir=run_dir,
        progress=False,
    )


@pytest.mark.parametrize("views", [3, "all"])
def test_the_student_is_given_the_teachers_outputs_of_the_view_it_sees(digits, views):
    method = _Record()
    teacher, trainer = _trainer(digits, method, views=views)
    result = trainer.fit()
    assert result.cache == "views" and trainer.cache.logits.shape[0] == trainer.views.size
    assert trainer.views.views == (18 if views == "all" else 3)
    with torch.no_grad():
        for inputs, given in method.seen[:6]:
            assert torch.allclose(teacher(inputs), given, atol=1e-5)
    # and bitwise in the fill's own batches: the cache row of (example, view) is teacher(view)
    from kdscope.data import collate

    x, _, idx = collate(digits.train.__getitems__(list(range(64))))
    view = torch.full_like(idx, 1)
    with torch.no_grad():
        direct = teacher(trainer.views.inputs(x, idx, view))
    assert torch.equal(trainer.cache.lookup(trainer.views.entry(idx, view), "cpu")[0], direct)


@pytest.mark.parametrize("store", ["memory", "disk"])
def test_an_interrupted_view_cached_run_resumes_bitwise(digits, tmp_path, store):
    _, full = _trainer(digits, "kd", store=store, run_dir=tmp_path / "full")
    full.fit()
    interrupted = InterruptAt(digits.train, 12)
    _, cut = _trainer(digits, "kd", store=store, run_dir=tmp_path / "cut", train_set=interrupted)
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    assert read_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] > 0
    _, resumed = _trainer(digits, "kd", store=store, run_dir=tmp_path / "cut")
    resumed.fit(resume=True)
    a, b = full.student.state_dict(), resumed.student.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if store == "disk":
        assert any((tmp_path / "cut" / "cache").glob("teacher_*.npy"))


def test_float16_views_are_the_teachers_outputs_rounded(digits):
    teacher, trainer = _trainer(digits, _Record(), views=2, cache_dtype="float16")
    trainer.fit()
    assert trainer.cache.logits.dtype == torch.float16


def test_ddp_ranks_build_the_same_bank(tmp_path, torchrun):
    from pathlib import Path

    torchrun(Path(__file__).with_name("ddp_worker.py"), "kd", tmp_path, "views")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["cache"].shape[0] == 200 * 4  # every (example, view) row on every rank
    assert torch.equal(ranks[0]["cache"], ranks[1]["cache"])
    weights = [{k: v for k, v in r["student"].items() if "running" not in k} for r in ranks]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
