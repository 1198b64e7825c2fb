"""``LoopState``: where the training loop is, exactly what a checkpoint holds besides the weights
and optimiser state of what is trained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class LoopState:
    """The loop's position and memory.

    Attributes:
        epoch: epochs finished.
        step: steps finished in the epoch under way (0 at an epoch boundary).
        best_val_acc, best_epoch: the best validation accuracy so far and the epoch (1-based)
            that reached it.
        history: one record per finished epoch (what ``metrics.jsonl`` holds).
        accumulators: the loss sums of the epoch under way, when it was interrupted.
        rng: every random stream (python, numpy, torch CPU and CUDA), as
            :func:`~kdscope.train.seeding.rng_state` captures them when the state is saved.
            A method's own random state (memory banks, fixed permutations) is in its buffers.
        stopped: the run stopped early on a validation plateau (it trains no further).
    """

    epoch: int = 0
    step: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    accumulators: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    stopped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def finish_epoch(self, record: dict[str, Any], min_delta: float = 0.0) -> bool:
        """Record a finished epoch; whether its validation accuracy is a new best (by more than
        ``min_delta``)."""
        self.history.append(record)
        self.epoch, self.step, self.accumulators = self.epoch + 1, 0, None
        val = record.get("val_acc")
        improved = val is not None and (
            self.best_val_acc is None or val > self.best_val_acc + min_delta
        )
        if improved:
            self.best_val_acc, self.best_epoch = val, self.epoch
        return improved

    def plateaued(self, patience: int | None) -> bool:
        """Whether ``patience`` epochs have passed since the best one."""
        return (
            patience is not None
            and self.best_epoch is not None
            and (self.epoch - self.best_epoch >= patience)
        )
