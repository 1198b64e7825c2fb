"""Lifelong learning: keep the old model's answers on its classes while learning new ones (LwF)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.methods.base import LOGITS, Method, Outputs, register_method
from kdscope.methods.params import NON_NEGATIVE, POSITIVE
from kdscope.models import classifier_of, describe, set_info


@register_method("lwf")
class LearningWithoutForgetting(Method):
    """Li & Hoiem 2016, "Learning without Forgetting", ECCV 2016, arXiv:1606.09282.

    The teacher is the previous model, predicting C_old classes; the student predicts C_old + C_new
    classes, its first C_old logits being the old ones (build it with :func:`expand_classes`). On
    the new data: loss = lambda_old * KL(softmax(z_t / T) || softmax(z_s[:, :C_old] / T)) plus the
    Trainer's CE on the labels (weight 1). T=2 and lambda_old=1 are the paper's; like the paper
    (Eq. 2) there is no T^2 factor. KL differs from the paper's soft cross-entropy by the teacher's
    entropy, a constant: same gradients. Deviation: the paper's warm-up (training the new head
    alone first) is not done; the whole student trains from the first step.
    """

    same_label_space = False
    family = "scheme"
    paper = "Li & Hoiem 2016, arXiv:1606.09282"
    constraints = {"temperature": POSITIVE, "lambda_old": NON_NEGATIVE}

    def __init__(self, temperature: float = 2.0, lambda_old: float = 1.0):
        super().__init__(LOGITS)
        self.temperature = temperature
        self.lambda_old = lambda_old

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        z_t, z_s = out.teacher_logits.float(), out.student_logits.float()
        if z_t.dim() != 2 or z_t.shape[1] >= z_s.shape[1]:
            raise ValueError(
                f"lwf needs one teacher predicting fewer classes than the student; got teacher "
                f"logits {tuple(z_t.shape)} and student logits {tuple(z_s.shape)}"
            )
        old = F.log_softmax(z_s[:, : z_t.shape[1]] / self.temperature, dim=1)
        target = F.log_softmax(z_t / self.temperature, dim=1)
        kl = F.kl_div(old, target, reduction="batchmean", log_target=True)
        return {"lwf": self.lambda_old * kl}


@torch.no_grad()
def expand_classes(model: nn.Module, num_classes: int) -> nn.Module:
    """A copy of ``model`` whose classifier predicts ``num_classes`` classes: the old rows are kept
    as the first outputs, the new rows are freshly initialised (LwF's student)."""
    head = classifier_of(model)
    if num_classes <= head.out_features:
        raise ValueError(
            f"num_classes must exceed the model's {head.out_features} classes, got {num_classes}"
        )
    new_head = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    new_head.to(head.weight.device, head.weight.dtype)
    new_head.weight[: head.out_features] = head.weight
    if head.bias is not None:
        new_head.bias[: head.out_features] = head.bias
    student = copy.deepcopy(model)
    path = next(name for name, module in model.named_modules() if module is head)
    parent, _, attr = path.rpartition(".")
    setattr(student.get_submodule(parent), attr, new_head)
    info = describe(model)
    spec = replace(info.spec, num_classes=num_classes) if info.spec else None
    return set_info(student, replace(info, num_classes=num_classes, spec=spec))


class ClassSubset(Dataset):
    """The examples of ``dataset`` whose label is in ``classes``, indexed 0..n-1 (the position the
    teacher cache keys on), labels unchanged."""

    def __init__(self, dataset: Dataset, classes: Sequence[int]):
        labels = _labels(dataset)
        self.dataset = dataset
        self.classes = sorted(set(classes))
        self.positions = torch.isin(labels, torch.tensor(self.classes)).nonzero().flatten()
        if len(self.positions) == 0:
            raise ValueError(f"no example of {type(dataset).__name__} has a label in {classes}")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        x, y = self.dataset[int(self.positions[i])][:2]
        return x, int(y), i


def _labels(dataset: Dataset) -> Tensor:
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, Tensor):
        return labels
    return torch.as_tensor([int(dataset[i][1]) for i in range(len(dataset))])
