"""Teacher-output cache: the teacher runs once over the training set instead of once per epoch.

Exact by construction: outputs are stored by dataset index and looked up by the indices of each
batch, so the student is always given the teacher outputs of the very inputs it sees. Under random
augmentation that holds only for a bank of fixed views per example (``views``, see
:mod:`~kdscope.train.views`), whose outputs are stored per (example, view). With
``train.cache_topk=k`` a :class:`TopKCache` keeps, per position, only the teacher's k likeliest
classes and the remaining mass (:mod:`~kdscope.methods.topk`), for language models whose full
distributions over a large vocabulary would not fit. With ``train.cache_dir``, a plain cache is
filled once into that directory and read by every later run of the same teacher and training
inputs (:mod:`~kdscope.train.cache_store`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.config import TrainConfig
from kdscope.data import collate, ordered_loader
from kdscope.features import FeatureTap
from kdscope.methods import Method
from kdscope.methods.topk import TopKTargets, topk_bytes_per_token, topk_targets
from kdscope.models import describe, example_features, reader
from kdscope.train.cache_store import cache_key, load_or_fill
from kdscope.train.views import ViewBank


@dataclass
class RunCache:
    """A run's teacher cache (None when off), its view bank, the mode used and the fill's time."""

    cache: TeacherCache | TopKCache | None
    views: ViewBank | None
    mode: str
    fill_s: float = 0.0


def build_run_cache(
    mode: str,
    teacher: nn.Module,
    train_set: Dataset,
    layers: list[str],
    cfg: TrainConfig,
    *,
    augment,
    batch_size: int,
    device: torch.device,
    amp: bool,
    directory: Path | None,
    progress,
    log,
    method: Method | None = None,
) -> RunCache:
    """The teacher cache of a run in ``mode`` (:func:`cache_mode`), within
    ``train.cache_max_gb``: over it, ``auto`` turns the cache off (saying so) and an asked-for
    cache is an error. A view cache's cost is logged before its fill. With ``train.cache_topk``,
    a :class:`TopKCache` for ``method``, which must read one (``Method.reads_topk``)."""
    if mode == "off":
        return RunCache(None, None, mode)
    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32
    x = collate([train_set[0]])[0].to(device)
    if cfg.cache_topk is not None:
        if method is None or not method.reads_topk:
            name = None if method is None else method.name or type(method).__name__
            raise ValueError(
                "train.cache_topk is read by method kd (forward KL against the cached top-k); "
                f"method {name!r} needs the teacher's full outputs: unset train.cache_topk"
            )
        # A top-k cache holds log-probabilities, so at the temperature the method reads.
        temperature = getattr(method, "temperature", 1.0)
        return _topk_cache(mode, teacher, train_set, x, cfg, temperature, batch_size, device, amp,
                           progress, log)  # fmt: skip
    views = None
    if mode == "views":
        views = ViewBank(augment, len(train_set), tuple(x.shape[1:]), cfg.views, cfg.seed)
    rows = views.size if views is not None else len(train_set)
    size = TeacherCache.estimate_bytes(teacher, x, layers, rows, dtype)
    if size > cfg.cache_max_gb * 2**30:
        if cfg.cache == "auto":
            log(
                f"teacher cache off: it would take {size / 2**30:.1f} GiB "
                f"> train.cache_max_gb={cfg.cache_max_gb}"
            )
            return RunCache(None, None, "off")
        raise ValueError(
            f"the teacher cache would take {size / 2**30:.1f} GiB, over "
            f"train.cache_max_gb={cfg.cache_max_gb}; raise it, use float16 or cache=off"
        )
    if views is not None:
        log(
            f"teacher view cache: {views.views} views x {len(train_set)} examples = {rows} "
            f"teacher passes, {size / 2**20:.1f} MiB ({cfg.cache_dtype}, {cfg.view_store})"
        )
    start = time.perf_counter()

    def fill(where: str, into: Path | None) -> TeacherCache:
        return TeacherCache.build(
            teacher, train_set, layers, batch_size=batch_size, device=device, dtype=dtype,
            where=where, directory=into, autocast=amp, progress=progress, views=views,
        )  # fmt: skip

    if cfg.cache_dir is not None and views is None:
        key = cache_key(
            teacher, train_set, layers, dtype=dtype, batch_size=batch_size, autocast=amp,
            device=device,
        )  # fmt: skip
        arrays, _ = load_or_fill(cfg.cache_dir, key, lambda into: fill("disk", into), mode,
                                 device, log)  # fmt: skip
        cache = TeacherCache(arrays[0], arrays[1:])
    else:
        cache = fill(cfg.view_store if views is not None else mode, directory)
    return RunCache(cache, views, mode, time.perf_counter() - start)


def _topk_cache(
    mode, teacher, train_set, x, cfg, temperature, batch_size, device, amp, progress, log
) -> RunCache:
    if mode != "memory":
        raise ValueError(
            f"train.cache_topk keeps its cache in memory; it cannot be combined with "
            f"train.cache={mode!r} (use auto or memory)"
        )
    info = describe(teacher)
    if info.output not in ("tokens", "classes"):
        raise ValueError(
            f"train.cache_topk needs class scores on the last dimension (a language model's "
            f"tokens, or a classifier's classes); this teacher's output is {info.output!r}"
        )
    with torch.no_grad():
        logits = reader(teacher).logits(teacher, x[:1])
    vocab = logits.shape[-1]
    k = cfg.cache_topk
    if k > vocab:
        raise ValueError(f"train.cache_topk={k} exceeds the teacher's {vocab} classes")
    dtype = torch.float16 if cfg.cache_dtype == "float16" else torch.float32
    positions = logits[0].numel() // vocab
    size = topk_bytes_per_token(k, vocab, dtype) * positions * len(train_set)
    if size > cfg.cache_max_gb * 2**30:
        raise ValueError(
            f"the top-{k} teacher cache would take {size / 2**30:.1f} GiB, over "
            f"train.cache_max_gb={cfg.cache_max_gb}; raise it or lower train.cache_topk"
        )
    log(
        f"teacher cache: top-{k} of {vocab} per position, {size / 2**20:.1f} MiB "
        f"({topk_bytes_per_token(k, vocab, dtype)} bytes per position, {cfg.cache_dtype})"
    )
    start = time.perf_counter()
    cache = TopKCache.build(
        teacher, train_set, k, temperature, batch_size=batch_size, device=device, dtype=dtype,
        autocast=amp, progress=progress,
    )  # fmt: skip
    return RunCache(cache, None, mode, time.perf_counter() - start)


class TopKCache:
    """The teacher's top-k log-probabilities (and ids, and the log of the remaining mass) at every
    position of every training example, as one :class:`~kdscope.methods.topk.TopKTargets` held
    on the training device; ``lookup`` gives a batch's entry, which ``kd`` reads with
    :func:`~kdscope.methods.topk.topk_kd`. No features: methods that read features take the full
    cache."""

    def __init__(self, targets: TopKTargets):
        self.targets = targets
        self.features: list = []

    @classmethod
    def build(
        cls,
        teacher: nn.Module,
        dataset: Dataset,
        k: int,
        temperature: float,
        *,
        batch_size: int = 512,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float16,
        autocast: bool = False,
        progress=None,
    ) -> TopKCache:
        device = torch.device(device)
        loader = ordered_loader(dataset, batch_size)
        read = reader(teacher).logits
        task = progress.add_task("teacher top-k cache", total=len(loader)) if progress else None
        stores = None
        with torch.no_grad():
            for x, _, idx in loader:
                with torch.autocast(device.type, enabled=autocast):
                    logits = read(teacher, x.to(device, non_blocking=True))
                entry = topk_targets(logits, k, temperature, dtype)
                if stores is None:
                    stores = [
                        torch.empty((len(dataset), *t.shape[1:]), dtype=t.dtype, device=device)
                        for t in entry[:3]
                    ]
                for store, part in zip(stores, entry[:3], strict=True):
                    store[idx.to(device)] = part
                if progress:
                    progress.advance(task)
        if progress:
            progress.remove_task(task)
        return cls(TopKTargets(*stores, temperature=temperature))

    def lookup(self, index: Tensor, device: torch.device) -> tuple[TopKTargets, list[Tensor]]:
        """The top-k entries of the examples at ``index``, on ``device``."""
        return self.targets.take(index.to(self.targets.logprobs.device)).to(device), []


def cache_mode(wanted: str, *, needed: bool, augmented: bool) -> str:
    """The teacher cache of a run: ``"off"``, ``"memory"``, ``"disk"`` or ``"views"``.

    ``wanted`` is ``train.cache`` (``auto``/``off``/``memory``/``disk``/``views``). Off when the
    method takes nothing from the teacher (``needed`` false). Under random augmentation, ``auto``
    is off (fresh draws, the teacher run live) and ``memory`` or ``disk`` an error, since a cached
    output would belong to other inputs; ``views`` caches a bank of fixed views per example, and
    needs augmentation.
    """
    if not needed:
        return "off"
    if wanted == "views":
        if not augmented:
            raise ValueError(
                "train.cache='views' caches augmented views, but the data has no augmentation; "
                "use train.cache=auto (the plain cache) or set data.augment"
            )
        return "views"
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
        feats = [example_features(teacher, example[:1], f) for f in tap.ordered()]
        per_example = logits[0].numel() + sum(f[0].numel() for f in feats)
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
        views: ViewBank | None = None,
    ) -> TeacherCache:
        """Run ``teacher`` over ``dataset`` (every view of every example, with ``views``) and
        keep its logits and the features at ``layers``, one row per example (per (example, view):
        row ``views.entry(i, v)``)."""
        device = torch.device(device)
        n = views.size if views is not None else len(dataset)
        passes = views.views if views is not None else 1
        loader = ordered_loader(dataset, batch_size)
        logits_store = None
        feature_stores: list = []
        total = len(loader) * passes
        task = progress.add_task("teacher cache", total=total) if progress else None
        read = reader(teacher).logits
        with torch.no_grad(), FeatureTap(teacher, layers, detach=True) as tap:
            for x, _, idx in loader:
                x = x.to(device, non_blocking=True)
                for v in range(passes):
                    rows, inputs = idx, x
                    if views is not None:
                        view = torch.full_like(idx, v)
                        rows, inputs = views.entry(idx, view), views.inputs(x, idx, view)
                    with torch.autocast(device.type, enabled=autocast):
                        logits = read(teacher, inputs)
                    outs = [logits, *(example_features(teacher, inputs, f) for f in tap.ordered())]
                    if logits_store is None:
                        stores = [
                            _allocate(o.shape[1:], n, dtype, device, where, directory, i)
                            for i, o in enumerate(outs)
                        ]
                        logits_store, feature_stores = stores[0], stores[1:]
                    for store, out in zip([logits_store, *feature_stores], outs, strict=True):
                        _write(store, rows, out.to(dtype))
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
