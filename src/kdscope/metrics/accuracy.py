"""Top-1 accuracy of a model on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import check_labels, collate
from kdscope.models import describe


@torch.no_grad()
def accuracy(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (its mode is restored afterwards).

    The class scores are read along the dimension its :class:`~kdscope.models.ModelInfo` names
    (per example, per token or per pixel); ``device`` defaults to the model's.
    """
    if len(dataset) == 0:
        raise ValueError("accuracy needs at least one example; the dataset is empty")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    info = describe(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    # Its own generator: creating the loader's iterator must not draw from torch's global RNG,
    # which a resumed run restores exactly.
    loader = DataLoader(
        dataset, batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator()
    )
    for x, y, *_ in loader:
        check_labels(y, info.num_classes, "the evaluated dataset")
        with torch.autocast(device.type, enabled=amp):
            pred = model(x.to(device)).argmax(info.class_dim).cpu()
        correct += (pred == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return correct / total
