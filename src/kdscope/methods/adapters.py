"""Shape adapters shared by the feature- and relation-based methods.

Adapters map student features to the teacher's shape (FitNet's regressor, OFD's connector, CRD's
embedding); they are trainable submodules of the method, built in ``bind`` once shapes are known.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.methods.base import Method, Outputs

Forward = Callable[[Method, Outputs], dict[str, Tensor]]


def full_precision(forward: Forward) -> Forward:
    """Run a method's ``forward`` outside autocast, so its matmuls stay in float32 under AMP.

    For losses built on Gram matrices, eigenvectors or exp(score / tau), which overflow or lose
    their cancellations in float16; the decorated forward casts its features to float itself.
    """

    @functools.wraps(forward)
    def wrapper(self: Method, out: Outputs) -> dict[str, Tensor]:
        with torch.autocast(out.student_logits.device.type, enabled=False):
            return forward(self, out)

    return wrapper


def flat(x: Tensor) -> Tensor:
    """(B, ...) -> (B, D)."""
    return x.reshape(x.shape[0], -1)


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (B, C, H, W) maps to the other's spatial size (AT, OFD)."""
    if a.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


def require_maps(method: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise a clear error when a method that needs (B, C, H, W) maps is given vectors."""
    bad = {name: shape for name, shape in shapes.items() if len(shape) != 4}
    if bad:
        raise ValueError(
            f"{method} needs convolutional feature maps (B, C, H, W); got {bad}. "
            "Choose conv layers with student_layers/teacher_layers."
        )


class ConvRegressor(nn.Module):
    """FitNet's regressor: student map (C_s, H_s, W_s) -> teacher's (C_t, H_t, W_t), BN, ReLU.

    The spatial mapping follows CRD/mdistiller's ``ConvReg``: a stride-2 3x3 conv when the student
    map is twice as large, a stride-2 4x4 transposed conv when half as large, otherwise a valid conv
    with kernel (1 + H_s - H_t, 1 + W_s - W_t) (1x1 when sizes match). Vectors (B, D) get a linear
    layer. Per-position features (B, T, D) of a sequence model (a transformer block's output) get a
    linear map at every position and neither BN nor ReLU: the residual stream is signed, and its
    scale is part of what the hint asks the student to match.
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int], relu: bool = True):
        super().__init__()
        if len(s_shape) != len(t_shape) or len(s_shape) not in (2, 3, 4):
            raise ValueError(
                f"cannot regress student features {tuple(s_shape)} onto teacher features "
                f"{tuple(t_shape)}: both must be (B, D), (B, T, D) or (B, C, H, W)"
            )
        if len(s_shape) == 3:
            if s_shape[1] != t_shape[1]:
                raise ValueError(
                    f"student and teacher sequence features cover {s_shape[1]} and {t_shape[1]} "
                    "positions; a per-position regressor needs the same number"
                )
            self.map = nn.Linear(s_shape[2], t_shape[2])
            self.bn = nn.Identity()
            relu = False
        elif len(s_shape) == 2:
            self.map = nn.Linear(s_shape[1], t_shape[1])
            self.bn = nn.BatchNorm1d(t_shape[1])
        else:
            (_, cs, hs, ws), (_, ct, ht, wt) = s_shape, t_shape
            if hs == 2 * ht and ws == 2 * wt:
                self.map = nn.Conv2d(cs, ct, 3, stride=2, padding=1)
            elif 2 * hs == ht and 2 * ws == wt:
                self.map = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1)
            elif hs >= ht and ws >= wt:
                self.map = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt))
            else:
                raise ValueError(
                    f"student map {hs}x{ws} is smaller than the teacher's {ht}x{wt} "
                    "and not half of it"
                )
            self.bn = nn.BatchNorm2d(ct)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.map(x))
        return F.relu(x) if self.relu else x


class Connector(nn.Module):
    """1x1 conv (or linear) + BN from C_s to C_t channels, no activation (OFD's connector).

    Initialised as OFD's code: conv weights N(0, 2 / C_t), BN weight 1 and bias 0.
    """

    def __init__(self, s_channels: int, t_channels: int, maps: bool = True):
        super().__init__()
        if maps:
            self.map = nn.Conv2d(s_channels, t_channels, 1, bias=False)
            self.bn = nn.BatchNorm2d(t_channels)
        else:
            self.map = nn.Linear(s_channels, t_channels, bias=False)
            self.bn = nn.BatchNorm1d(t_channels)
        nn.init.normal_(self.map.weight, 0.0, (2.0 / t_channels) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.map(x))


class Embed(nn.Module):
    """Linear map of flattened features to ``dim``, then L2 normalisation (CRD, CRCD)."""

    def __init__(self, dim_in: int, dim: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(flat(x)), dim=1)
