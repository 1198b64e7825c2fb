"""Top-1 accuracy of a model on a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def accuracy(
    model: nn.Module, dataset: Dataset, batch_size: int, device, collate, amp=False
) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (eval mode restored to the previous mode
    after)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for x, y, _ in loader:
        with torch.autocast(torch.device(device).type, enabled=amp):
            pred = model(x.to(device)).argmax(1).cpu()
        correct += (pred == y).sum().item()
        total += y.numel()
    model.train(was_training)
    return correct / max(total, 1)
