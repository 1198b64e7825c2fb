"""Distance correlation (dCor, the bias-corrected R*, partial and semi-partial dCor).

Names and meanings follow the ``dcor`` package (Székely & Rizzo 2007, 2014); unlike ``dcor``,
constant inputs raise :class:`~kdscope.metrics.similarity.ZeroVarianceError` instead of returning 0.
Float64 throughout; distances are never built as an n x n x d difference tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdscope.metrics.matrices import (
    ArrayLike,
    as_features,
    check_pair,
    check_varies,
    distances_of,
    double_centered,
    matrix_dot,
    u_centered,
    u_correlation,
    u_inner,
)


def _distance_matrices(*arrays: ArrayLike, names: str, centre, min_n: int) -> list[Tensor]:
    feats = [as_features(a, name) for a, name in zip(arrays, names, strict=True)]
    for other, name in zip(feats[1:], names[1:], strict=True):
        check_pair(feats[0], other, min_n, (names[0], name))
    for f, name in zip(feats, names, strict=True):
        check_varies(f, name)
    return [centre(d, inplace=not d.requires_grad) for d in map(distances_of, feats)]


def distance_covariance_sqr(x: ArrayLike, y: ArrayLike) -> Tensor:
    """V-statistic dCov^2_n(x, y) = sum A * B / n^2 (Székely et al. 2007)."""
    a, b = _distance_matrices(x, y, names="xy", centre=double_centered, min_n=2)
    return matrix_dot(a, b) / a.numel()


def distance_covariance(x: ArrayLike, y: ArrayLike) -> Tensor:
    """dCov_n(x, y), the square root of :func:`distance_covariance_sqr`."""
    return distance_covariance_sqr(x, y).clamp_min(0.0).sqrt()


def distance_correlation_sqr(x: ArrayLike, y: ArrayLike) -> Tensor:
    """V-statistic dCor^2 = dCov^2(x, y) / sqrt(dCov^2(x, x) dCov^2(y, y)), in [0, 1]."""
    a, b = _distance_matrices(x, y, names="xy", centre=double_centered, min_n=2)
    return matrix_dot(a, b) / (matrix_dot(a, a) * matrix_dot(b, b)).sqrt()


def distance_correlation(x: ArrayLike, y: ArrayLike) -> Tensor:
    """dCor(x, y), the square root of :func:`distance_correlation_sqr`."""
    return distance_correlation_sqr(x, y).clamp_min(0.0).sqrt()


def u_distance_covariance_sqr(x: ArrayLike, y: ArrayLike) -> Tensor:
    """Unbiased dCov^2: <A~, B~> with U-centred distance matrices (Székely & Rizzo 2014), n >= 4."""
    a, b = _distance_matrices(x, y, names="xy", centre=u_centered, min_n=4)
    return u_inner(a, b)


def u_distance_correlation_sqr(x: ArrayLike, y: ArrayLike) -> Tensor:
    """Bias-corrected dCor^2, R*(x, y) = <A~, B~> / sqrt(<A~, A~> <B~, B~>); may be < 0; n >= 4."""
    a, b = _distance_matrices(x, y, names="xy", centre=u_centered, min_n=4)
    return u_correlation(a, b)


def _project_out(a: Tensor, c: Tensor) -> Tensor:
    """a minus its projection on c in the space of U-centred matrices (c = 0 projects nothing)."""
    cc = u_inner(c, c)
    return a if cc.item() == 0 else a - (u_inner(a, c) / cc) * c


def partial_distance_covariance(x: ArrayLike, y: ArrayLike, z: ArrayLike) -> Tensor:
    """pdCov(x, y; z) = <P_z(A~), P_z(B~)>, P_z the projection orthogonal to C~.

    Székely & Rizzo (2014), Annals of Statistics 42(6).
    """
    a, b, c = _distance_matrices(x, y, z, names="xyz", centre=u_centered, min_n=4)
    return u_inner(_project_out(a, c), _project_out(b, c))


def _clipped_correlation(a: Tensor, b: Tensor) -> Tensor:
    return u_correlation(a, b).clamp(-1.0, 1.0)


def partial_distance_correlation(x: ArrayLike, y: ArrayLike, z: ArrayLike) -> Tensor:
    """pdCor(x, y; z) = (R*xy - R*xz R*yz) / sqrt((1 - R*xz^2)(1 - R*yz^2)), in [-1, 1].

    As in ``dcor``, the value is 0 when x or y is entirely explained by z (a zero denominator).
    """
    a, b, c = _distance_matrices(x, y, z, names="xyz", centre=u_centered, min_n=4)
    r_xy, r_xz, r_yz = (
        _clipped_correlation(a, b),
        _clipped_correlation(a, c),
        _clipped_correlation(b, c),
    )
    denominator = (1 - r_xz**2) * (1 - r_yz**2)
    if denominator.item() <= 0:
        return torch.zeros((), dtype=torch.float64)
    return (r_xy - r_xz * r_yz) / denominator.sqrt()


def semipartial_distance_correlation(x: ArrayLike, y: ArrayLike, z: ArrayLike) -> Tensor:
    """Semi-partial dCor: R* between P_z(A~) (x with z projected out) and B~ (y untouched).

    Equals (R*xy - R*xz R*yz) / sqrt(1 - R*xz^2). UniCAM's objective (Adhane et al.) with x the
    student's features, z the base model's and y the label embeddings. 0 when z explains x entirely.
    """
    a, b, c = _distance_matrices(x, y, z, names="xyz", centre=u_centered, min_n=4)
    r_xy, r_xz, r_yz = (
        _clipped_correlation(a, b),
        _clipped_correlation(a, c),
        _clipped_correlation(b, c),
    )
    denominator = 1 - r_xz**2
    if denominator.item() <= 0:
        return torch.zeros((), dtype=torch.float64)
    return (r_xy - r_xz * r_yz) / denominator.sqrt()
