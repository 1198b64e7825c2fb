"""What CKA (:mod:`kdscope.metrics.similarity`) and distance correlation
(:mod:`kdscope.metrics.dcor`) share: feature checks, distance matrices and the double and U
centring of kernel or distance matrices, with their inner products. Float64 throughout."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

ArrayLike = Tensor | np.ndarray


class ZeroVarianceError(ValueError):
    """Features that do not vary over the examples: any similarity with them is undefined (0/0)."""


def as_features(x: ArrayLike, name: str = "x", float64: bool = True) -> Tensor:
    """``x`` as an (n, d) float64 tensor, flattened per example.

    ``float64=False`` keeps float32 (half and bfloat16 become float32) for :func:`linear_gram`.
    NaN or inf raise a ValueError naming ``name`` (a layer, in the Evaluator).
    """
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim == 0:
        raise ValueError(f"{name} must have one row per example, got a scalar")
    wide = float64 or t.dtype == torch.float64
    t = t.reshape(t.shape[0], -1).to(torch.float64 if wide else torch.float32)
    # One reduction instead of an n x d mask: a finite sum means finite entries.
    if not torch.isfinite(t.detach().sum()):
        bad = (~torch.isfinite(t.detach())).sum().item()
        if bad:
            raise ValueError(f"{name} has {bad} NaN or inf values (of {t.numel()})")
    return t


def check_pair(x: Tensor, y: Tensor, min_n: int, names: tuple[str, str] = ("x", "y")) -> int:
    """Common sample count of ``x`` and ``y``, checked against ``min_n``."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of examples, "
            f"got {x.shape[0]} and {y.shape[0]}"
        )
    n = x.shape[0]
    if n < min_n:
        raise ValueError(f"this estimator needs n >= {min_n} examples, got n = {n}")
    return n


def check_varies(x: Tensor, name: str = "x") -> None:
    """Raise :class:`ZeroVarianceError` when all rows of ``x`` are equal."""
    if bool((x.detach() == x.detach()[:1]).all()):
        raise ZeroVarianceError(
            f"{name} is constant over its {x.shape[0]} examples (zero variance): "
            "the similarity is undefined"
        )


def pairwise_distances(x: ArrayLike, eps: float = 0.0) -> Tensor:
    """n x n Euclidean distance matrix of the rows of ``x`` (float64, zero diagonal).

    Uses ||x_i||^2 + ||x_j||^2 - 2 x_i.x_j on column-centred rows, clamped at 0, so memory is
    O(n^2 + nd). The square root has a zero gradient at zero distance (never NaN); ``eps > 0`` is
    added inside it to smooth the gradient of near-coincident points, at the price of a bias of
    about eps / (2 distance). Differentiable once (no gradient of the gradient).
    """
    return distances_of(as_features(x), eps)


def distances_of(x: Tensor, eps: float = 0.0) -> Tensor:
    """:func:`pairwise_distances` of features already checked and in float64."""
    return _Distances.apply(x, eps)


class _Distances(torch.autograd.Function):
    """Distance matrix with a closed-form gradient: one n x n by n x d product in the backward.

    With W = (G + G^T) / D off the zero distances (G the incoming gradient), d loss / d X =
    (diag(W 1) - W) X, a graph Laplacian times X: zero where points coincide, and the same for
    centred and raw X because the Laplacian annihilates constant columns. Autograd through the
    centring, the squared norms and the product took 2-3x longer (forward and backward), much of
    it allocating n x d temporaries.
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps: float) -> Tensor:
        x = x - x.mean(0, keepdim=True)
        sq_norms = torch.linalg.vector_norm(x, dim=1).square_()
        sq = torch.addmm(sq_norms[:, None] + sq_norms[None, :], x, x.T, alpha=-2.0)
        # Each pass over an n x n matrix costs about as much as the product: work in place.
        # The diagonal is zeroed after the square root: rounding leaves ~1e-13 there.
        d = sq.clamp_min_(0.0).add_(eps).sqrt_().fill_diagonal_(0.0)
        ctx.save_for_backward(x, d)
        return d

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        x, d = ctx.saved_tensors
        laplacian = (grad + grad.T).div_(d).masked_fill_(d == 0, 0.0).neg_()
        laplacian.diagonal().sub_(laplacian.sum(1))
        return laplacian @ x, None


def double_centered(d: Tensor, inplace: bool = False) -> Tensor:
    """A_ij = d_ij - mean_i. - mean_.j + mean_.. (Székely et al. 2007).

    ``inplace`` overwrites ``d`` (saves an n x n copy; only for a ``d`` autograd does not need).
    """
    rows, cols = d.mean(1, keepdim=True), d.mean(0, keepdim=True)
    out = d if inplace else d.clone()
    return out.sub_(rows).sub_(cols).add_(rows.mean())


def u_centered(d: Tensor, inplace: bool = False) -> Tensor:
    """U-centred matrix of Székely & Rizzo 2014 (``d``'s diagonal is ignored; the result's is 0).

    A~_ij = d_ij - sum_l d_il/(n-2) - sum_k d_kj/(n-2) + sum_kl d_kl/((n-1)(n-2)) for i != j.
    ``inplace`` overwrites ``d`` (saves an n x n copy; only for a ``d`` autograd does not need).
    """
    n = d.shape[0]
    if n < 3:
        raise ValueError(f"U-centring needs n >= 3 examples, got n = {n}")
    out = (d if inplace else d.clone()).fill_diagonal_(0.0)
    rows = out.sum(1, keepdim=True) / (n - 2)
    cols = out.sum(0, keepdim=True) / (n - 2)
    total = rows.sum() / (n - 1)
    return out.sub_(rows).sub_(cols).add_(total).fill_diagonal_(0.0)


def matrix_dot(a: Tensor, b: Tensor) -> Tensor:
    return a.reshape(-1) @ b.reshape(-1)


def u_inner(a: Tensor, b: Tensor) -> Tensor:
    """Inner product of U-centred matrices: sum_{i != j} a_ij b_ij / (n (n - 3)), n >= 4."""
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"the U-statistic needs n >= 4 examples, got n = {n}")
    return (matrix_dot(a, b) - a.diagonal() @ b.diagonal()) / (n * (n - 3))


def u_correlation(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> / sqrt(<a, a> <b, b>) in the space of U-centred matrices (can be negative)."""
    denominator = u_inner(a, a) * u_inner(b, b)
    if denominator.item() <= 0:
        raise ZeroVarianceError("a U-centred matrix has zero norm: the correlation is undefined")
    return u_inner(a, b) / denominator.sqrt()
