"""The view bank: a fixed set of augmented views per training example, so that the teacher cache
stays exact under augmentation (``train.cache=views``).

Each training example ``i`` has ``V`` views: parameters of the run's (parametric) augmentation,
drawn once from the run's seed, or every view the augmentation has (``views="all"``, where its view
space is finite, as crop + flip at small padding). The teacher's outputs are cached per (example,
view); each epoch the student sees one view per example, drawn from (seed, epoch), and is given the
teacher outputs of that very view. A bank of V views is not the augmentation's fresh draws: a
student sees at most V distinct inputs per example (docs/results.md measures what this changes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from kdscope.train.seeding import derived_seed

# Independent random streams of the run seed.
_BANK_STREAM = 0x5EED_0001
_PICK_STREAM = 0x5EED_0002
# Views are drawn in fixed chunks of examples, so a bank does not depend on any batch size.
_CHUNK = 1024


def parametric(augment) -> bool:
    """Whether ``augment`` can be cached by view (it has ``sample`` and ``apply``)."""
    return callable(getattr(augment, "sample", None)) and callable(getattr(augment, "apply", None))


class ViewBank:
    """``views`` views of each of ``num_examples`` examples of ``shape`` under ``augment``.

    Args:
        augment: a parametric augmentation (``sample``, ``apply``, and ``enumerate`` for
            ``views="all"``), such as :class:`~kdscope.data.CropFlip`.
        views: views per example, or ``"all"`` to enumerate the augmentation's view space.
        seed: the run seed; the bank and each epoch's choice of views are pure functions of it.
    """

    def __init__(
        self,
        augment,
        num_examples: int,
        shape: tuple[int, ...],
        views: int | Literal["all"],
        seed: int,
    ):
        if not parametric(augment):
            raise ValueError(
                f"train.cache=views needs an augmentation that can name its views (sample/apply); "
                f"{type(augment).__name__} cannot"
            )
        self.augment, self.num_examples, self.seed = augment, num_examples, seed
        if views == "all":
            enumerate_views = getattr(augment, "enumerate", None)
            if not callable(enumerate_views):
                raise ValueError(
                    f"train.views='all' needs an augmentation with a finite view space; "
                    f"{type(augment).__name__} has none: give a number of views"
                )
            self.shared = enumerate_views(shape)  # (V, P): the same views for every example
            self.views = len(self.shared)
            self.params = None
        else:
            if views < 1:
                raise ValueError(f"train.views must be >= 1 or 'all', got {views}")
            self.shared, self.views = None, int(views)
            self.params = self._draw(shape)  # (N, V, P)

    def _draw(self, shape: tuple[int, ...]) -> Tensor:
        chunks = []
        for k, start in enumerate(range(0, self.num_examples, _CHUNK)):
            n = min(_CHUNK, self.num_examples - start)
            gen = torch.Generator().manual_seed(derived_seed(self.seed, _BANK_STREAM, k))
            chunks.append(
                self.augment.sample(n * self.views, shape, gen, "cpu").view(n, self.views, -1)
            )
        return torch.cat(chunks)

    @property
    def size(self) -> int:
        """Cached entries: one per (example, view)."""
        return self.num_examples * self.views

    def view_params(self, idx: Tensor, view: Tensor) -> Tensor:
        """The augmentation parameters (B, P) of view ``view`` (B,) of examples ``idx`` (B,)."""
        idx, view = idx.cpu(), view.cpu()
        return self.shared[view] if self.shared is not None else self.params[idx, view]

    def inputs(self, x: Tensor, idx: Tensor, view: Tensor) -> Tensor:
        """The batch ``x`` of examples ``idx``, each in its view."""
        return self.augment.apply(x, self.view_params(idx, view))

    def entry(self, idx: Tensor, view: Tensor) -> Tensor:
        """Cache rows of (example, view) pairs."""
        return idx.cpu() * self.views + view.cpu()

    def epoch_views(self, epoch: int) -> Tensor:
        """The view each example shows in ``epoch`` (N,): a pure function of (seed, epoch)."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, _PICK_STREAM, epoch))
        return torch.randint(self.views, (self.num_examples,), generator=gen)

    def nbytes(self) -> int:
        held = self.shared if self.shared is not None else self.params
        return held.numel() * held.element_size()
