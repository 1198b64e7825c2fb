"""Loss bookkeeping for the training loop: per-step terms summed without synchronising, the
non-finite check (and where to go back to after one), and the epoch's log line."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# Per-step counts, summed as they are (not weighted by the batch size like the loss terms).
COUNTS = ("correct", "counted")


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the term and the step."""


def last_good(run) -> str:
    """Where a run stopped by a :class:`NonFiniteLossError` can go back to (``run``: its
    :class:`~kdscope.train.run_dir.RunDirectory`, or None), and what may help."""
    if run is not None and run.last.exists():
        return (
            f"the last good checkpoint is {run.last} (a lower learning rate or a "
            "smaller weight of that term may help)"
        )
    return (
        "no checkpoint was written before it (a lower learning rate or a smaller weight "
        "of that term may help)"
    )


class LossAccumulator:
    """Per-step loss terms kept on the device and summed at flush time, so steps never synchronise.

    Flushing is also where non-finite terms are caught: the first bad step and term are named.
    """

    def __init__(self):
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self.sums: dict[str, float] = {}
        self.count = 0
        self.steps = 0

    @classmethod
    def from_state(cls, state: dict | None) -> LossAccumulator:
        acc = cls()
        if state:
            acc.sums, acc.count, acc.steps = dict(state["sums"]), state["count"], state["steps"]
        return acc

    def state(self) -> dict:
        return {"sums": self.sums, "count": self.count, "steps": self.steps}

    def add(self, terms: dict[str, Tensor], batch: int) -> None:
        self.pending.append((batch, terms))

    def flush(self, epoch: int, step: int, check: bool = True) -> None:
        if not self.pending:
            return
        names = list(self.pending[0][1])
        rows = torch.stack(
            [torch.stack([t[k].float() for k in names]) for _, t in self.pending]
        ).cpu()
        if check and not torch.isfinite(rows).all():
            bad = ~torch.isfinite(rows)
            bad_row = int(bad.any(1).nonzero()[0])
            # name the term that went bad rather than the total it poisons
            cols = [j for j in bad[bad_row].nonzero().flatten().tolist() if names[j] != "loss"]
            bad_col = cols[0] if cols else names.index("loss")
            first_step = step - len(self.pending) + bad_row
            value = rows[bad_row, bad_col].item()
            raise NonFiniteLossError(
                f"loss term {names[bad_col]!r} became {value} at epoch {epoch + 1}, "
                f"step {first_step}; training stopped"
            )
        for j, name in enumerate(names):
            col = rows[:, j].double()
            if name not in COUNTS:
                col = col * torch.tensor([b for b, _ in self.pending], dtype=torch.float64)
            self.sums[name] = self.sums.get(name, 0.0) + col.sum().item()
        self.count += sum(b for b, _ in self.pending)
        self.steps += len(self.pending)
        self.pending = []

    def means(self) -> dict[str, float]:
        n = max(self.count, 1)
        terms = {k: v / n for k, v in self.sums.items() if k not in ("loss", *COUNTS)}
        counted = self.sums.get("counted", 0.0)
        return {
            "loss": self.sums.get("loss", 0.0) / n,
            "terms": terms,
            # None where the task has no per-prediction accuracy (a detector's losses)
            "train_acc": self.sums.get("correct", 0.0) / counted if counted else None,
        }


def epoch_line(r: dict[str, Any]) -> str:
    terms = " ".join(f"{k}={v:.4f}" for k, v in r["terms"].items())
    val = f" val_acc={r['val_acc']:.4f}" if r.get("val_acc") is not None else ""
    speed = f" {r['images_per_s']:.0f} img/s" if r.get("images_per_s") else ""
    acc = f" train_acc={r['train_acc']:.4f}" if r.get("train_acc") is not None else ""
    loss = f"loss={r['loss']:.4f} {terms}{acc}"
    c, i = r.get("probe_agree_C"), r.get("probe_agree_I")
    probe = f" probe agree C={c:.4f} I={i:.4f}" if c is not None and i is not None else ""
    return f"epoch {r['epoch']}: {loss}{val}{probe}{speed}"
