"""Batched augmentation presets and per-channel image statistics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Generator, Tensor
from torch.nn import functional as F

from kdscope.data.bundle import BatchAugment
from kdscope.registry import Registry

AUGMENTS: Registry[BatchAugment | None] = Registry("augmentation preset")


class CropFlip:
    """Random crop with zero padding, then random horizontal flip, for a whole batch at once.

    The CIFAR recipe of He et al. 2016 (pad 4, crop 32, flip with probability 1/2), generalised to
    any size with ``pad = max(1, min(H, W) // 8)``. Every example draws its own offsets and flip
    from ``generator``, which must live on ``x``'s device; the same generator state gives the same
    output.

    The augmentation is parametric: :meth:`sample` draws an example's view (its row and column
    offsets and its flip), :meth:`apply` makes it, and :meth:`enumerate` lists every view
    ((2 pad + 1)^2 x 2 of them), which is what the teacher's view cache (``train.cache=views``)
    needs to store the teacher's outputs of the very inputs a student sees.

    Deviations: the padding value is 0 in normalised space, i.e. the dataset's mean colour rather
    than black. Flips are applied whatever the data; they are wrong for digits and text, where a
    mirrored image is no longer the same class, so choose ``"none"`` there.
    """

    takes_targets = False

    @staticmethod
    def pad(shape: tuple[int, ...]) -> int:
        return max(1, min(shape[-2], shape[-1]) // 8)

    def sample(self, n: int, shape: tuple[int, ...], generator: Generator, device=None) -> Tensor:
        """Views (n, 3) of examples of ``shape`` (C, H, W): row offset, column offset, flip."""
        pad = self.pad(shape)
        device = device if device is not None else generator.device
        dy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=device)
        flip = torch.rand((n, 1), generator=generator, device=device) < 0.5
        return torch.cat([dy, dx, flip.long()], dim=1)

    def enumerate(self, shape: tuple[int, ...]) -> Tensor:
        """Every view of an example of ``shape`` (V, 3)."""
        offsets = torch.arange(2 * self.pad(shape) + 1)
        dy, dx, flip = torch.meshgrid(offsets, offsets, torch.arange(2), indexing="ij")
        return torch.stack([dy.flatten(), dx.flatten(), flip.flatten()], dim=1)

    def apply(self, x: Tensor, views: Tensor) -> Tensor:
        """Each example of ``x`` (B, C, H, W) in its view (B, 3)."""
        if x.dim() != 4:
            raise ValueError(f"expected a batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        pad = self.pad(x.shape)
        views = views.to(x.device)
        dy, dx, flip = views[:, :1], views[:, 1:2], views[:, 2:3].bool()
        rows = dy + torch.arange(h, device=x.device)
        cols_in_order = torch.arange(w, device=x.device)
        cols = dx + torch.where(flip, cols_in_order.flip(0), cols_in_order)
        padded = F.pad(x, (pad, pad, pad, pad))
        # Two gathers: pick each example's rows, then its (possibly mirrored) columns.
        picked_rows = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
        return picked_rows.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def __call__(self, x: Tensor, generator: Generator) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
        return self.apply(x, self.sample(len(x), x.shape, generator, x.device))


standard_augment = CropFlip()


AUGMENTS.register("none")(None)
AUGMENTS.register("standard")(standard_augment)


def augment_batch(augment, x: Tensor, y, generator: Generator):
    """``(x, y)`` after ``augment``: an image augmentation moves the images alone, a dense one
    (``augment.moves_targets``, the ``dense`` preset) their masks or boxes with them."""
    if getattr(augment, "moves_targets", False):
        return augment(x, y, generator)
    return augment(x, generator), y


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
