"""``RunDirectory``: a run's directory as the training loop sees it. It observes the loop (epoch
ends, an interrupt) and is where the loop resumes from; a loop without one writes nothing.

    <path>/metrics.jsonl          one line per finished epoch
    <path>/checkpoints/last.pt    written atomically at every epoch end and on an interrupt
    <path>/checkpoints/best.pt    the epoch with the best validation accuracy
    <path>/cache/                 the teacher cache when it is kept on disk
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdscope.train.checkpoint import restore_training_state, save_training_state
from kdscope.train.state import LoopState


class RunDirectory:
    """The directory ``path`` of one run; ``config`` (the resolved run config, as a dict) goes into
    every checkpoint so that a run can be re-read and re-run from it."""

    def __init__(self, path: str | Path, config: dict[str, Any] | None = None):
        self.path = Path(path)
        self.config = config or {}

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    def resume(self, parts: dict[str, Any]) -> LoopState | None:
        """Load ``last.pt`` into ``parts`` (and the RNG states); None when there is none."""
        if not self.last.exists():
            return None
        return LoopState.from_dict(restore_training_state(self.last, parts))

    def start(self, state: LoopState) -> None:
        """``metrics.jsonl`` as the state knows it: a kill between the log line and the
        checkpoint, or a fresh start in an old directory, must leave no duplicate or orphan
        epochs."""
        self.path.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r) + "\n" for r in state.history)
        (self.path / "metrics.jsonl").write_text(text)

    def epoch_end(self, state: LoopState, parts: dict[str, Any], improved: bool) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(state.history[-1]) + "\n")
        save_training_state(self.last, parts, state, self.config)
        if improved:
            save_training_state(self.checkpoints / "best.pt", parts, state, self.config)

    def interrupted(self, state: LoopState, parts: dict[str, Any]) -> Path:
        """Checkpoint the loop where it stopped (at a step boundary); the path written."""
        save_training_state(self.last, parts, state, self.config)
        return self.last
