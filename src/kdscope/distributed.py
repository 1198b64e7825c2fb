"""Where a run runs: its device (``train.device``), and DDP under ``torchrun`` (gloo on CPU, NCCL
on GPU; plain single-process otherwise)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str) -> torch.device:
    """The device of ``train.device``: ``auto`` (a GPU when there is one), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"train.device={name!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA GPU is available; use auto or cpu")
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group ``torchrun`` set up through environment variables, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def average_gradients(module: nn.Module, info: DistInfo) -> None:
    """All-reduce the gradients of a module DDP does not wrap (a method's adapters)."""
    if not info.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= info.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """``t`` of every rank concatenated along dim 0 in rank order; ``t`` itself outside DDP.

    Every rank's ``t`` must have the same shape, as batches do: EpochBatchSampler gives each rank
    the same number of examples. For state a method keeps per example (memory banks), so that every
    rank updates it with the whole global batch. No gradient flows back through it.
    """
    world = _world()
    if world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean of ``t`` over ranks; ``t`` itself outside DDP."""
    world = _world()
    if world == 1:
        return t
    total = t.detach().clone()
    dist.all_reduce(total)
    return total / world
