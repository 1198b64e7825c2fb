"""Teacher-output cache: the teacher runs once over the training set instead of once per epoch.

Exact by construction: outputs are stored by dataset index and looked up by the indices of each
batch, so the student is always given the teacher outputs of the very inputs it sees. Valid only
when those inputs are deterministic (no random augmentation); the Trainer refuses it otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import collate
from kdscope.features import FeatureTap
from kdscope.models import reader


def cache_mode(wanted: str, *, needed: bool, augmented: bool) -> str:
    """Where the teacher cache lives for a run: ``"off"``, ``"memory"`` or ``"disk"``.

    ``wanted`` is ``train.cache`` (``auto``/``off``/``memory``/``disk``). Off when the method takes
    nothing from the teacher (``needed`` false); off under random augmentation, and an error when
    ``memory`` or ``disk`` was asked for then, since a cached output would belong to other inputs.
    """
    if not needed:
        return "off"
    if augmented:
        if wanted in ("memory", "disk"):
            raise ValueError(
                f"train.cache={wanted!r} needs deterministic inputs, but the data has random "
                "augmentation; use data.augment=none or train.cache=auto/off"
            )
        return "off"
    return "memory" if wanted == "auto" else wanted


class TeacherCache:
    """Teacher logits (and features at chosen layers) for every example of a dataset.

    ``where="memory"`` keeps them as tensors on ``device`` (a GPU-resident cache when training on
    GPU); ``where="disk"`` writes float arrays under ``directory`` and memory-maps them.
    """

    def __init__(self, logits: Tensor | np.ndarray, features: list[Tensor | np.ndarray]):
        self.logits = logits
        self.features = features

    @staticmethod
    def estimate_bytes(
        teacher: nn.Module,
        example: Tensor,
        layers: list[str],
        num_examples: int,
        dtype: torch.dtype,
    ) -> int:
        with torch.no_grad(), FeatureTap(teacher, layers, detach=True) as tap:
            logits = reader(teacher).logits(teacher, example[:1])
        per_example = logits[0].numel() + sum(f[0].numel() for f in tap.ordered())
        return per_example * num_examples * torch.empty((), dtype=dtype).element_size()

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        dataset: Dataset,
        layers: list[str],
        *,
        batch_size: int = 512,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        where: str = "memory",
        directory: Path | None = None,
        autocast: bool = False,
        progress=None,
    ) -> TeacherCache:
        device = torch.device(device)
        n = len(dataset)
        # Its own generator: the loader must not draw from the global RNG a resume restores.
        loader = DataLoader(
            dataset, batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator()
        )
        logits_store = None
        feature_stores: list = []
        task = progress.add_task("teacher cache", total=len(loader)) if progress else None
        read = reader(teacher).logits
        with torch.no_grad(), FeatureTap(teacher, layers, detach=True) as tap:
            for x, _, idx in loader:
                with torch.autocast(device.type, enabled=autocast):
                    logits = read(teacher, x.to(device, non_blocking=True))
                outs = [logits, *tap.ordered()]
                if logits_store is None:
                    stores = [
                        _allocate(o.shape[1:], n, dtype, device, where, directory, i)
                        for i, o in enumerate(outs)
                    ]
                    logits_store, feature_stores = stores[0], stores[1:]
                for store, out in zip([logits_store, *feature_stores], outs, strict=True):
                    _write(store, idx, out.to(dtype))
                if progress:
                    progress.advance(task)
        if progress:
            progress.remove_task(task)
        for store in [logits_store, *feature_stores]:
            if isinstance(store, np.memmap):
                store.flush()
        return cls(logits_store, feature_stores)

    def lookup(self, index: Tensor, device: torch.device) -> tuple[Tensor, list[Tensor]]:
        """Teacher logits and features of the examples at ``index``, as float32 on ``device``."""
        return _read(self.logits, index, device), [_read(f, index, device) for f in self.features]


def _allocate(
    shape, n: int, dtype: torch.dtype, device, where: str, directory: Path | None, i: int
):
    if where == "memory":
        return torch.empty((n, *shape), dtype=dtype, device=device)
    if directory is None:
        raise ValueError("a disk cache needs a directory")
    directory.mkdir(parents=True, exist_ok=True)
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    return np.lib.format.open_memmap(
        directory / f"teacher_{i}.npy", mode="w+", dtype=np_dtype, shape=(n, *shape)
    )


def _write(store, idx: Tensor, value: Tensor) -> None:
    if isinstance(store, np.ndarray):
        store[idx.numpy()] = value.cpu().numpy()
    else:
        store[idx.to(store.device)] = value.to(store.device)


def _read(store, index: Tensor, device: torch.device) -> Tensor:
    if isinstance(store, np.ndarray):
        order = np.asarray(index.cpu())
        return torch.from_numpy(np.asarray(store[order])).to(
            device, torch.float32, non_blocking=True
        )
    return store[index.to(store.device)].to(device, torch.float32, non_blocking=True)
