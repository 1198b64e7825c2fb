"""A real Ctrl-C in the middle of an epoch, for the resume tests."""

from __future__ import annotations

import os
import signal

from torch.utils.data import Dataset


class InterruptAt(Dataset):
    """Sends this process SIGINT while the loader fetches batch number ``at`` (counting every
    batch fetch, the teacher cache's included): the stop lands before that batch is trained on."""

    def __init__(self, dataset, at):
        self.dataset, self.at, self.calls = dataset, at, 0

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        # The wrapped split's attributes (a text split's pad_id, labels) show through.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return self.dataset.__getitems__(indices)
