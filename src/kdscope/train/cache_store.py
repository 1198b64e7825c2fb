"""A teacher cache kept under ``train.cache_dir`` and reused by every run that would fill the same.

A study's distilled runs of one teacher on one training set fill identical caches: the SST-2
study's ten spent 6-10 min each on the same MiniLM pass. With a cache directory, the first run
keeps its fill there and the others read it. Reuse is exact, never by name: an entry is found by
the SHA-256 of everything its contents depend on, computed afresh by every run:

- the teacher's weights and buffers, byte for byte, and its class;
- the training inputs and labels the teacher reads, in order, batched as the fill batches them
  (token batches are padded per batch, so the batch size is part of what the teacher saw);
- the feature layers, the cache dtype, the fill batch size, autocast and the device type
  (a GPU's outputs differ from a CPU's in the last bits).

An entry is written to a temporary directory, flushed, and renamed into place, so a reader never
sees a partial one (an interrupted fill removes its directory; a killed one leaves a hidden
``.<key>.*.tmp`` that nothing reads); two runs filling the same entry at once both finish and
one rename wins. Only the plain caches (``memory``, ``disk``) are kept: a view bank is drawn from
its run's seed and a top-k cache holds one temperature's distribution, so those are filled per
run as before.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.data import ordered_loader

FORMAT = 1
MANIFEST = "manifest.json"


def cache_key(
    teacher: nn.Module,
    dataset: Dataset,
    layers: list[str],
    *,
    dtype: torch.dtype,
    batch_size: int,
    autocast: bool,
    device: torch.device,
) -> str:
    """The SHA-256 (hex) of what a :class:`~kdscope.train.cache.TeacherCache` of ``teacher`` over
    ``dataset`` holds: equal keys, equal caches."""
    digest = hashlib.sha256()
    settings = {
        "format": FORMAT,
        "teacher": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
        "layers": list(layers),
        "dtype": str(dtype),
        "batch_size": batch_size,
        "autocast": autocast,
        "device": device.type,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        _update(digest, tensor)
    for batch in ordered_loader(dataset, batch_size):
        _update(digest, batch)
    return digest.hexdigest()


def load_or_fill(
    root: Path, key: str, fill: Callable[[Path], object], where: str, device: torch.device, log
) -> tuple[list[np.ndarray | Tensor], bool]:
    """The arrays (logits, then features) of the entry ``key`` under ``root``, filled first by
    ``fill(directory)`` (which writes ``teacher_{i}.npy`` there) when absent, and whether they
    were reused. ``where="memory"`` loads them onto ``device``; ``"disk"`` memory-maps them."""
    final = root / key[:32]
    if not final.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:32]}.", suffix=".tmp", dir=root))
        try:
            fill(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        files = sorted(staging.glob("teacher_*.npy"), key=lambda p: int(p.stem.split("_")[1]))
        (staging / MANIFEST).write_text(
            json.dumps({"key": key, "arrays": [p.name for p in files]}, indent=2)
        )
        try:
            staging.rename(final)
        except OSError:  # another run put the same entry in place first
            shutil.rmtree(staging, ignore_errors=True)
            if not final.is_dir():
                raise
        reused = False
    else:
        reused = True
    manifest = json.loads((final / MANIFEST).read_text())
    if manifest.get("key") != key:
        raise ValueError(
            f"teacher cache {final} holds another cache (its manifest's key differs from "
            f"{key[:12]}...); remove it"
        )
    arrays = [np.load(final / name, mmap_mode="r") for name in manifest["arrays"]]
    if reused:
        log(f"teacher cache reused from {final}")
    if where == "memory":
        return [torch.from_numpy(np.array(a)).to(device) for a in arrays], reused
    return arrays, reused


def _update(digest, obj) -> None:
    if isinstance(obj, Tensor):
        tensor = obj.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        _update(digest, torch.from_numpy(np.ascontiguousarray(obj)))
    elif isinstance(obj, dict):
        for k in sorted(obj):
            digest.update(str(k).encode())
            _update(digest, obj[k])
    elif isinstance(obj, list | tuple):
        digest.update(f"{type(obj).__name__}{len(obj)}".encode())
        for item in obj:
            _update(digest, item)
    else:
        digest.update(repr(obj).encode())
