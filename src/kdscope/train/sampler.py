"""Batch order as a pure function of (seed, epoch): resumable mid-epoch and shardable across
ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from kdscope.train.seeding import derived_seed


class EpochBatchSampler(Sampler[list[int]]):
    """Yield index batches of one epoch.

    The permutation of epoch ``e`` depends only on ``(seed, e)``, so a run resumed at batch
    ``start`` sees exactly the batches an uninterrupted run would. Under DDP each rank takes every
    ``world``-th example of the same permutation (the tail that does not divide evenly is dropped,
    as DistributedSampler does with ``drop_last``). A final batch of one example is dropped in
    training (BatchNorm cannot use it).
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
    ):
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.start = start
        self.rank = rank
        self.world = world

    def _indices(self) -> torch.Tensor:
        if self.shuffle:
            g = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_examples, generator=g)
        else:
            order = torch.arange(self.num_examples)
        if self.world > 1:
            usable = self.num_examples - self.num_examples % self.world
            order = order[:usable][self.rank :: self.world]
        return order

    def batches(self) -> list[torch.Tensor]:
        batches = list(self._indices().split(self.batch_size))
        if self.shuffle and batches and len(batches[-1]) < 2:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches()[self.start :]:
            yield batch.tolist()

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.start)
