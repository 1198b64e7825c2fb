"""Top-1 accuracy of a model on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import check_labels, collate
from kdscope.models import describe, reader


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (its mode is restored afterwards).

    Predictions are read as the model's :class:`~kdscope.models.ModelInfo` output layout says
    (per example, per token, or per labelled pixel); ``device`` defaults to the model's.
    """
    if len(dataset) == 0:
        raise ValueError("accuracy needs at least one example; the dataset is empty")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    info = describe(model)
    read = reader(info)
    was_training = model.training
    model.eval()
    correct = total = 0
    # Its own generator: creating the loader's iterator must not draw from torch's global RNG,
    # which a resumed run restores exactly.
    loader = DataLoader(
        dataset, batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator()
    )
    for x, y, *_ in loader:
        check_labels(y, info.num_classes, "the evaluated dataset", read.ignore_index)
        with torch.autocast(device.type, enabled=amp):
            logits = read.logits(model, x.to(device)).cpu()
        right, counted = read.correct(logits, y)
        correct += int(right)
        total += counted
    model.train(was_training)
    if total == 0:
        raise ValueError(f"{type(model).__name__} makes no predictions that have an accuracy")
    return correct / total
