"""Saved predictions and features for ``kdscope audit --from-logits``: ``.npy``, ``.pt`` and
``.safetensors`` files, read as tensors and checked, every problem one sentence naming the file.

A file holds one array, or (``.pt``, ``.safetensors``) a mapping of named arrays: logits and labels
are then its ``logits`` / ``labels`` entry or its only entry; features may be several layers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SUFFIXES = (".npy", ".pt", ".safetensors")


def read_arrays(path: str | Path) -> dict[str, Tensor]:
    """The named arrays in ``path`` (a bare array is named ``""``)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(
            f"{path.name}: unknown file type {path.suffix or '(none)'!r}; accepted: "
            f"{', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            return {"": torch.from_numpy(np.load(path, allow_pickle=False))}
        if path.suffix == ".pt":
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        else:
            try:
                from safetensors.torch import load_file
            except ImportError as err:
                raise ImportError(
                    f"{path.name}: reading .safetensors needs the safetensors package "
                    "(pip install safetensors)"
                ) from err
            loaded = load_file(path)
    except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path.name}: not a readable {path.suffix} file ({err})") from None
    if isinstance(loaded, np.ndarray):
        loaded = torch.from_numpy(loaded)
    if isinstance(loaded, Tensor):
        return {"": loaded}
    if isinstance(loaded, dict) and loaded and all(isinstance(v, Tensor) for v in loaded.values()):
        return {str(k): v for k, v in loaded.items()}
    raise ValueError(
        f"{path.name}: holds {type(loaded).__name__}, not a tensor or a mapping of names to tensors"
    )


def _one(path: Path, arrays: dict[str, Tensor], key: str) -> Tensor:
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    if key in arrays:
        return arrays[key]
    raise ValueError(f"{path.name}: holds {sorted(arrays)}; name the array {key!r} or keep one")


def _check_finite(path: Path, x: Tensor) -> None:
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1) if x.numel() else torch.zeros(0, dtype=bool)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"{path.name}: {int(bad.sum())} example(s) with NaN or inf values (first at example "
            f"{first})"
        )


def read_logits(path: str | Path) -> Tensor:
    """Logits (examples, classes) as float64, finite."""
    path = Path(path)
    x = _one(path, read_arrays(path), "logits")
    if x.ndim != 2 or x.shape[1] < 2 or not x.is_floating_point():
        raise ValueError(
            f"{path.name}: logits must be a float array (examples, classes >= 2), got "
            f"{x.dtype} of shape {tuple(x.shape)}"
        )
    _check_finite(path, x)
    return x.double()


def read_labels(path: str | Path, classes: int) -> Tensor:
    """Integer class labels (examples,) in [0, ``classes``)."""
    path = Path(path)
    y = _one(path, read_arrays(path), "labels")
    if y.ndim != 1:
        raise ValueError(f"{path.name}: labels must be one-dimensional, got shape {tuple(y.shape)}")
    if y.is_floating_point():
        _check_finite(path, y)
        if not bool((y == y.round()).all()):
            raise ValueError(f"{path.name}: labels must be whole class indices, got {y.dtype}")
    y = y.long()
    outside = ((y < 0) | (y >= classes)).nonzero()
    if len(outside):
        i = int(outside[0])
        raise ValueError(
            f"{path.name}: label {int(y[i])} at example {i} is outside [0, {classes}) (the logits "
            f"have {classes} classes)"
        )
    return y


def read_features(path: str | Path) -> dict[str, Tensor]:
    """Per-layer features, each (examples, ...) flattened to (examples, d), float64, finite."""
    path = Path(path)
    out = {}
    for name, x in read_arrays(path).items():
        if x.ndim < 2 or not x.is_floating_point():
            raise ValueError(
                f"{path.name}: features {name or '(the array)'} must be a float array (examples, "
                f"...), got {x.dtype} of shape {tuple(x.shape)}"
            )
        _check_finite(path, x)
        out[name or "features"] = x.reshape(len(x), -1).double()
    return out


def check_examples(named: dict[str, int]) -> None:
    """Every file gives the same number of examples (ValueError naming the first that differs)."""
    (first, n), *rest = named.items()
    for name, m in rest:
        if m != n:
            raise ValueError(f"{name} has {m} examples but {first} has {n}; they must match")
