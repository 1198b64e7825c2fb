"""ROAD: remove and debias with noisy linear imputation (Rong et al., ICML 2022, arXiv:2202.00449).

A removed pixel takes the weighted mean of its 8 neighbours (1/6 for the 4 direct, 1/12 for the
diagonals; neighbours outside the image are dropped), which couples all removed pixels of an image
into one sparse linear system shared by the channels; N(0, noise_std^2) noise is then added to
imputed pixels only, so the mask cannot leak through perfectly smooth infills. Images are in [0, 1],
before normalisation.

Two solvers give the same answer: ``"direct"`` builds one block-diagonal scipy system for the whole
batch (exact, CPU); ``"cg"`` runs Jacobi-preconditioned conjugate gradients with the stencil as a
3x3 convolution, all images and channels at once on the images' device (the system is symmetric
positive definite whenever an image keeps at least one pixel).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import spsolve
from torch import Generator, Tensor

Solver = Literal["auto", "direct", "cg"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_WEIGHTS = [1 / 6 if dy == 0 or dx == 0 else 1 / 12 for dy, dx in _OFFSETS]
TIE_BREAK = 1e-4


def road_impute(
    images: Tensor,
    keep_mask: Tensor,
    noise_std: float = 0.01,
    generator: Generator | None = None,
    solver: Solver = "auto",
) -> Tensor:
    """Fill the pixels where ``keep_mask`` is False by noisy linear imputation.

    Args:
        images: (B, C, H, W) images in [0, 1].
        keep_mask: (B, H, W) bool, True where the pixel is kept.
        noise_std: standard deviation of the Gaussian noise added to imputed pixels (0 for none).
        generator: source of the noise, for reproducible perturbations.
        solver: ``"direct"`` (scipy sparse LU), ``"cg"`` (conjugate gradients on the images'
            device) or ``"auto"`` (direct on CPU, cg elsewhere).

    Returns:
        (B, C, H, W) images, equal to ``images`` where the mask keeps pixels.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, h, w = images.shape
    if keep_mask.shape != (b, h, w):
        raise ValueError(
            f"keep_mask must be (B, H, W) = {(b, h, w)} to match images, "
            f"got {tuple(keep_mask.shape)}"
        )
    if solver not in ("auto", "direct", "cg"):
        raise ValueError(f"solver must be 'auto', 'direct' or 'cg', got {solver!r}")
    keep = keep_mask.to(device=images.device, dtype=torch.bool)
    empty = (~keep.flatten(1).any(1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"every image must keep at least one pixel; images {empty} keep none")
    if keep.all():
        return images.clone()
    if solver == "auto":
        solver = "direct" if images.device.type == "cpu" else "cg"
    filled = _solve_direct(images, keep) if solver == "direct" else _solve_cg(images, keep)
    if noise_std > 0:
        noise_device = generator.device if generator is not None else images.device
        noise = torch.randn(filled.shape, generator=generator, device=noise_device)
        filled = filled + noise_std * noise.to(images.device, images.dtype)
    return torch.where(keep[:, None], images, filled)


def road_keep_top(
    images: Tensor,
    maps: Tensor,
    fraction: float,
    noise_std: float = 0.01,
    generator: Generator | None = None,
    solver: Solver = "auto",
) -> Tensor:
    """LeRF: keep the ``fraction`` of pixels the maps rank highest and impute the rest."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction kept must be in (0, 1], got {fraction}")
    keep = top_pixels(maps, fraction, generator)
    return road_impute(images, keep, noise_std, generator, solver)


def road_remove_top(
    images: Tensor,
    maps: Tensor,
    fraction: float,
    noise_std: float = 0.01,
    generator: Generator | None = None,
    solver: Solver = "auto",
) -> Tensor:
    """MoRF: impute the ``fraction`` of pixels the maps rank highest and keep the rest."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction removed must be in [0, 1), got {fraction}")
    keep = ~top_pixels(maps, fraction, generator)
    return road_impute(images, keep, noise_std, generator, solver)


def top_pixels(maps: Tensor, fraction: float, generator: Generator | None = None) -> Tensor:
    """(B, H, W) bool mask of the ``round(fraction * H * W)`` highest-ranked pixels of each map.

    Maps are (B, H, W) or (B, C, H, W) (summed over channels). A uniform ``1e-4`` random tie-break
    keeps flat regions (and all-zero maps) from being ranked in raster order.
    """
    if maps.ndim == 4:
        maps = maps.sum(1)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W) or (B, C, H, W), got shape {tuple(maps.shape)}")
    b, h, w = maps.shape
    device = generator.device if generator is not None else maps.device
    jitter = torch.rand((b, h * w), generator=generator, device=device).to(maps.device)
    scores = maps.reshape(b, -1).float() + TIE_BREAK * jitter
    k = round(fraction * h * w)
    keep = torch.zeros(b, h * w, dtype=torch.bool, device=maps.device)
    keep.scatter_(1, scores.topk(k, dim=1).indices, True)
    return keep.reshape(b, h, w)


def _solve_direct(images: Tensor, keep: Tensor) -> Tensor:
    """Solve every image's system at once: one block-diagonal sparse matrix, C right-hand sides."""
    b, c, h, w = images.shape
    img = images.detach().double().cpu().permute(0, 2, 3, 1).reshape(-1, c).numpy()
    removed = ~keep.cpu().numpy().reshape(-1)
    rows = np.flatnonzero(removed)
    var_of = np.full(removed.size, -1)
    var_of[rows] = np.arange(rows.size)
    bi, yi, xi = np.unravel_index(rows, (b, h, w))

    diag = np.zeros(rows.size)
    rhs = np.zeros((rows.size, c))
    off_r, off_c, off_v = [], [], []
    for (dy, dx), weight in zip(_OFFSETS, _WEIGHTS, strict=True):
        ny, nx = yi + dy, xi + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[inside] += weight
        eq = np.flatnonzero(inside)
        nbr = np.ravel_multi_index((bi[eq], ny[eq], nx[eq]), (b, h, w))
        unknown = removed[nbr]
        off_r.append(eq[unknown])
        off_c.append(var_of[nbr[unknown]])
        np.add.at(rhs, eq[~unknown], weight * img[nbr[~unknown]])
        off_v.append(np.full(int(unknown.sum()), -weight))
    r = np.concatenate([np.arange(rows.size), *off_r])
    col = np.concatenate([np.arange(rows.size), *off_c])
    val = np.concatenate([diag, *off_v])
    system = csr_matrix((val, (r, col)), shape=(rows.size, rows.size)).tocsc()
    solution = spsolve(system, rhs).reshape(rows.size, c)

    out = img.copy()
    out[rows] = solution
    out = torch.from_numpy(out).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return out.to(images.device, images.dtype)


def _solve_cg(images: Tensor, keep: Tensor, tol: float = 1e-7) -> Tensor:
    """Jacobi-preconditioned CG batched over images and channels; the stencil is a 3x3 conv."""
    b, c, h, w = images.shape
    # MPS has no float64; elsewhere float64 keeps CG's residual well below the imputation noise.
    dtype = torch.float64 if images.device.type != "mps" else torch.float32
    kernel = torch.tensor(
        [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
        dtype=dtype,
        device=images.device,
    ).reshape(1, 1, 3, 3)

    def stencil(x: Tensor) -> Tensor:
        return F.conv2d(x, kernel, padding=1)

    removed = (~keep).to(dtype)[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w)
    x0 = images.detach().to(dtype).reshape(b * c, 1, h, w)
    diag = stencil(torch.ones_like(x0))
    rhs = stencil(x0 * (1 - removed)) * removed

    def apply(x: Tensor) -> Tensor:
        return (diag * x - stencil(x * removed)) * removed

    inv_diag = removed / diag
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    z = inv_diag * r
    p = z.clone()
    rz = (r * z).sum((1, 2, 3), keepdim=True)
    stop = tol**2 * (rhs * rhs).sum((1, 2, 3), keepdim=True).clamp_min(1e-30)
    for _ in range(h * w):
        ap = apply(p)
        alpha = rz / (p * ap).sum((1, 2, 3), keepdim=True).clamp_min(1e-300)
        x = x + alpha * p
        r = r - alpha * ap
        if bool(((r * r).sum((1, 2, 3), keepdim=True) <= stop).all()):
            break
        z = inv_diag * r
        rz_next = (r * z).sum((1, 2, 3), keepdim=True)
        p = z + (rz_next / rz.clamp_min(1e-300)) * p
        rz = rz_next
    out = x0 * (1 - removed) + x * removed
    return out.reshape(b, c, h, w).to(images.dtype)
