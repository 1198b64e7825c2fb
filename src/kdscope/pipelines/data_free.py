"""Data-free distillation: synthesise inputs from the teacher (DeepInversion), then distill."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.api import distill
from kdscope.features import FeatureTap
from kdscope.metrics import accuracy
from kdscope.train import save_atomic


def bn_statistics_loss(inputs: list[Tensor], layers: list[nn.Module]) -> Tensor:
    """DeepInversion's R_feature: sum over BN layers of ||mu(x) - mu_BN||_2 + ||var(x) - var_BN||_2,
    with the batch mean and (biased) variance of each BN layer's input per channel."""
    total = inputs[0].new_zeros(())
    for x, bn in zip(inputs, layers, strict=True):
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        total = total + torch.norm(bn.running_mean - mean, 2) + torch.norm(bn.running_var - var, 2)
    return total


def total_variation(x: Tensor) -> Tensor:
    """The L2 norms of the differences to the right, down and both diagonal neighbours, summed (the
    TV prior of DeepInversion's code)."""
    return (
        torch.norm(x[..., :, :-1] - x[..., :, 1:])
        + torch.norm(x[..., :-1, :] - x[..., 1:, :])
        + torch.norm(x[..., 1:, :-1] - x[..., :-1, 1:])
        + torch.norm(x[..., :-1, :-1] - x[..., 1:, 1:])
    )


def deep_inversion(
    teacher: nn.Module,
    num_images: int,
    image_shape: tuple[int, int, int],
    *,
    batch_size: int = 256,
    steps: int = 2000,
    lr: float = 0.05,
    bn_weight: float = 10.0,
    tv_weight: float = 2.5e-5,
    l2_weight: float = 0.0,
    jitter: int = 2,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Yin, Molchanov, Li, Alvarez, Mallya, Hoiem, Jha, Kautz 2020, "Dreaming to Distill: Data-free
    Knowledge Transfer via DeepInversion", CVPR 2020, arXiv:1912.08795.

    Optimises ``num_images`` inputs (in the teacher's normalised input space, from N(0, 1)) with
    Adam so that the frozen teacher, in eval mode, classifies them as their target classes and the
    statistics of every BN layer's input match its running statistics:

        CE(teacher(x), y) + bn_weight * R_feature + tv_weight * R_TV + l2_weight * ||x||_2

    (:func:`bn_statistics_loss`, :func:`total_variation`), each step on x rolled by a random offset
    of up to ``jitter`` pixels. Targets cycle through the classes (0, 1, ..., C-1, 0, ...). The
    defaults are the paper's CIFAR-10 settings (its code: lr 0.05, r_feature 10, TV 2.5e-5, no L2,
    2000 steps, batches of 256, jitter 2). Not done: Adaptive DeepInversion's competition term
    and the code's keeping of the lowest-loss iterate (the last one is returned). Tiny images
    need other values: on 8x8 digits with resnet8 the defaults left the teacher agreeing with 14%
    of the targets, while bn_weight=1, lr=0.1, jitter=0 reached 100% within 100 steps.

    Returns ``(images (N, C, H, W) on the CPU, targets (N,))``.
    """
    device = next(teacher.parameters()).device
    bns = [
        (name, m)
        for name, m in teacher.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    ]
    if not bns:
        raise ValueError(
            f"DeepInversion needs a teacher with BatchNorm running statistics; "
            f"{type(teacher).__name__} has none"
        )
    was_training = teacher.training
    grads = [p.requires_grad for p in teacher.parameters()]
    teacher.eval().requires_grad_(False)
    with torch.no_grad():
        num_classes = teacher(torch.zeros(1, *image_shape, device=device)).shape[1]
    gen = torch.Generator().manual_seed(seed)
    images, targets = [], []
    with FeatureTap(teacher, [f"{n}:in" for n, _ in bns]) as tap:
        for start in range(0, num_images, batch_size):
            y = torch.arange(start, min(start + batch_size, num_images)) % num_classes
            x = torch.randn(len(y), *image_shape, generator=gen).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=lr)
            y = y.to(device)
            for _ in range(steps):
                dx, dy = torch.randint(-jitter, jitter + 1, (2,), generator=gen).tolist()
                shifted = torch.roll(x, shifts=(dx, dy), dims=(2, 3))
                loss = (
                    F.cross_entropy(teacher(shifted), y)
                    + bn_weight * bn_statistics_loss(tap.ordered(), [m for _, m in bns])
                    + tv_weight * total_variation(shifted)
                    + l2_weight * torch.norm(shifted, 2)
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            images.append(x.detach().cpu())
            targets.append(y.cpu())
    teacher.train(was_training)
    for p, flag in zip(teacher.parameters(), grads, strict=True):
        p.requires_grad_(flag)
    return torch.cat(images), torch.cat(targets)


class SyntheticSet(Dataset):
    """Images and labels held as tensors, served as ``(image, label, index)`` like every kdscope
    split (a whole batch per ``__getitems__``)."""

    def __init__(self, images: Tensor, labels: Tensor):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        return self.images[i], int(self.labels[i]), i

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index], index


@dataclass
class DataFreeResult:
    """What a data-free run produced: the synthetic set, how the teacher sees it, the student."""

    root: Path
    num_images: int
    teacher_agreement: float  # fraction of synthetic images the teacher assigns to their target
    classes_covered: int  # distinct classes among the teacher's predictions on them
    fit: Any  # kdscope.train.FitResult of the distillation stage
    test_acc: float | None
    teacher_test_acc: float | None

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "num_images": self.num_images,
            "teacher_agreement": self.teacher_agreement,
            "classes_covered": self.classes_covered,
            "test_acc": self.test_acc,
            "teacher_test_acc": self.teacher_test_acc,
        }


def data_free(
    teacher: nn.Module,
    student: nn.Module,
    out_dir: str | Path,
    *,
    image_shape: tuple[int, int, int],
    num_images: int = 1024,
    inversion: dict[str, Any] | None = None,
    test_set: Dataset | None = None,
    method: str = "kd",
    epochs: int = 10,
    batch_size: int = 128,
    progress: bool = True,
    **train_options: Any,
) -> DataFreeResult:
    """Distill ``teacher`` into ``student`` without its training data (DeepInversion, Yin et al.
    2020): synthesise ``num_images`` inputs with :func:`deep_inversion` (keyword arguments in
    ``inversion``), then train with the ordinary Trainer (``method``, ``epochs``, ``batch_size``
    and TrainConfig fields in ``train_options``) on them, the targets as labels.

    Writes ``out_dir/synthetic.pt`` (images, targets), the run directory ``out_dir/distill`` and
    ``out_dir/summary.json``. ``test_set`` (real data, never used for training) gives the test
    accuracies of student and teacher.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    images, targets = deep_inversion(teacher, num_images, image_shape, **(inversion or {}))
    save_atomic({"images": images, "targets": targets}, root / "synthetic.pt")
    device = next(teacher.parameters()).device
    with torch.no_grad():
        predicted = torch.cat([teacher(b.to(device)).argmax(1).cpu() for b in images.split(512)])
    fit = distill(
        teacher,
        student,
        SyntheticSet(images, targets),
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        run_dir=root / "distill",
        progress=progress,
        **train_options,
    )
    test_acc = teacher_acc = None
    if test_set is not None:
        device = next(student.parameters()).device
        test_acc = accuracy(student, test_set, 512, device)
        teacher_acc = accuracy(teacher.to(device), test_set, 512, device)
    result = DataFreeResult(
        root=root,
        num_images=num_images,
        teacher_agreement=(predicted == targets).float().mean().item(),
        classes_covered=len(predicted.unique()),
        fit=fit,
        test_acc=test_acc,
        teacher_test_acc=teacher_acc,
    )
    (root / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result
