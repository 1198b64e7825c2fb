"""Batched augmentation presets and per-channel image statistics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Generator, Tensor
from torch.nn import functional as F

from kdscope.data.bundle import BatchAugment
from kdscope.registry import Registry

AUGMENTS: Registry[BatchAugment | None] = Registry("augmentation preset")


def standard_augment(x: Tensor, generator: Generator) -> Tensor:
    """Random crop with zero padding, then random horizontal flip, for a whole batch at once.

    The CIFAR recipe of He et al. 2016 (pad 4, crop 32, flip with probability 1/2), generalised to
    any size with ``pad = max(1, min(H, W) // 8)``. Every example draws its own offsets and flip
    from ``generator``, which must live on ``x``'s device; the same generator state gives the same
    output.

    Deviations: the padding value is 0 in normalised space, i.e. the dataset's mean colour rather
    than black. Flips are applied whatever the data; they are wrong for digits and text, where a
    mirrored image is no longer the same class, so choose ``"none"`` there.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=x.device)
    flip = torch.rand((b, 1), generator=generator, device=x.device) < 0.5
    rows = dy + torch.arange(h, device=x.device)
    cols_in_order = torch.arange(w, device=x.device)
    cols = dx + torch.where(flip, cols_in_order.flip(0), cols_in_order)
    padded = F.pad(x, (pad, pad, pad, pad))
    # Two gathers: pick each example's rows, then its (possibly mirrored) columns.
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return picked_rows.gather(3, cols[:, None, None, :].expand(b, c, h, w))


AUGMENTS.register("none")(None)
AUGMENTS.register("standard")(standard_augment)


def get_augment(name: str) -> BatchAugment | None:
    """The batched augmentation for preset ``name`` (``None`` for ``"none"``)."""
    return AUGMENTS.get(name)


def channel_stats(batches: Iterable[Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over all pixels of batches shaped (B, C, H, W).

    Accumulates in float64 so millions of pixels do not lose precision.
    """
    total = total_sq = None
    count = 0
    for batch in batches:
        x = batch.double()
        sums, sums_sq = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total = sums if total is None else total + sums
        total_sq = sums_sq if total_sq is None else total_sq + sums_sq
        count += x.numel() // x.shape[1]
    if total is None:
        raise ValueError("channel_stats needs at least one batch")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
