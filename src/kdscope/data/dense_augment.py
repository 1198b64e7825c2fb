"""Batched augmentation for dense tasks: the image's masks and boxes move with it."""

from __future__ import annotations

import torch
from torch import Generator, Tensor
from torch.nn import functional as F

from kdscope.data.dense import DetectionTarget
from kdscope.data.transforms import AUGMENTS

DenseTarget = Tensor | list[DetectionTarget]


def dense_augment(
    x: Tensor, target: DenseTarget, generator: Generator, min_scale: float = 0.6
) -> tuple[Tensor, DenseTarget]:
    """Random crop-and-rescale, then random horizontal flip, for a whole batch at once.

    Each example draws a square-aspect crop of side ``s * (H, W)``, ``s`` uniform in
    ``[min_scale, 1]``, at a uniform position inside the image, resizes it back to (H, W) and
    mirrors it with probability 1/2; all draws come from ``generator`` (on ``x``'s device), so the
    same generator state gives the same output. Images are resampled bilinearly, masks (B, H, W)
    by nearest neighbour (labels, including the ignore index, are never blended). Boxes (xyxy
    pixels) are mapped by the same transform and clipped to the image; a box left with no area
    is dropped with its label. Other keys of a detection target are passed through unchanged.

    Deviation from the torchvision detection references: crops keep the aspect ratio and never
    zoom out (no padding), so an augmented scene is always part of the original canvas.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch of shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must lie in (0, 1], got {min_scale}")
    b, _, h, w = x.shape
    detection = isinstance(target, list)
    if detection and len(target) != b:
        raise ValueError(f"{b} images but {len(target)} detection targets")
    if not detection and (target.dim() != 3 or target.shape != (b, h, w)):
        raise ValueError(
            f"a segmentation target must have shape (B, H, W) = {(b, h, w)}, got "
            f"{tuple(target.shape)}"
        )
    draws = torch.rand((b, 4), generator=generator, device=x.device)
    s = min_scale + (1 - min_scale) * draws[:, 0]
    # Crop origin in pixel-edge coordinates; flip mirrors the output about its centre.
    x0, y0 = draws[:, 1] * (1 - s) * w, draws[:, 2] * (1 - s) * h
    flip = draws[:, 3] < 0.5
    sign = torch.where(flip, -1.0, 1.0).to(x.dtype)
    # Output pixel-edge u maps to input x0 + s * u (mirrored: x0 + s * (W - u)); in
    # grid_sample's [-1, 1] coordinates (align_corners=False) that is the affine map below.
    theta = torch.zeros((b, 2, 3), dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = sign * s
    theta[:, 0, 2] = s - 1 + 2 * x0 / w
    theta[:, 1, 1] = s
    theta[:, 1, 2] = s - 1 + 2 * y0 / h
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    if not detection:
        masks = F.grid_sample(
            target[:, None].to(x.dtype), grid, mode="nearest", align_corners=False
        )
        return out, masks[:, 0].round().to(target.dtype)
    moved = []
    for i, t in enumerate(target):
        boxes = t["boxes"]
        xs = (boxes[:, 0::2] - x0[i]) / s[i]
        if flip[i]:
            xs = w - xs.flip(1)
        ys = (boxes[:, 1::2] - y0[i]) / s[i]
        new = torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1)
        new[:, 0::2] = new[:, 0::2].clamp(0, w)
        new[:, 1::2] = new[:, 1::2].clamp(0, h)
        keep = (new[:, 2] > new[:, 0]) & (new[:, 3] > new[:, 1])
        moved.append({**t, "boxes": new[keep], "labels": t["labels"][keep]})
    return out, moved


# augment_batch (what the Trainer calls) passes the labels to an augmentation that moves them.
dense_augment.moves_targets = True
AUGMENTS.register("dense")(dense_augment)
