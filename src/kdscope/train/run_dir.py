"""``RunDirectory``: a run's directory as the training loop sees it. It is locked for the whole run,
observes the loop (epoch ends, an interrupt) and is where the loop resumes from, refusing a resume
whose configuration would change the result; a loop without one writes nothing.

    <path>/run.lock               held while a process trains into the directory
    <path>/config.yaml            the resolved config (re-runnable as is)
    <path>/metrics.jsonl          one line per finished epoch
    <path>/checkpoints/last.pt    written atomically at every epoch end and on an interrupt
    <path>/checkpoints/best.pt    the epoch with the best validation accuracy
    <path>/cache/                 the teacher cache when it is kept on disk
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kdscope.config import RunConfig
from kdscope.train.checkpoint import (
    CheckpointError,
    read_checkpoint,
    restore_training_state,
    save_training_state,
)
from kdscope.train.scalar_log import TensorBoardLog
from kdscope.train.state import LoopState

# Fields a resumed run may change: they do not change what is trained, only where, how fast, or
# for how long (epochs may only grow).
RESUMABLE = {
    "name",
    "out_dir",
    "train.epochs",
    "train.threads",
    "train.cache",  # between the exact modes only (cache_identity)
    "train.cache_max_gb",
    "train.cache_dir",
    "train.log",
    "data.num_workers",
    "data.eval_batch_size",
    "data.data_dir",
    "data.download",
}


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple]:
    """The dotted fields whose values differ between two nested config dicts: name -> (old, new)."""
    changes = {}
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes |= config_changes(a, b, f"{name}.")
        elif a != b:
            changes[name] = (a, b)
    return changes


def cache_identity(mode: Any) -> str | None:
    """What a teacher-cache mode changes in the result: every mode but the view bank gives the
    student the teacher's outputs of the inputs it sees (None: nothing); the bank changes those
    inputs (V fixed views per example instead of fresh draws)."""
    return "views" if mode == "views" else None


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's run config with the fields added to kdscope since it was written at their
    defaults (a new field's default keeps the old behaviour), so that they do not count as
    changes on resume; a config the schema cannot read is compared as it is."""
    try:
        return RunConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:
        return config


def resume_conflicts(old: dict[str, Any], new: dict[str, Any], epochs_done: int) -> list[str]:
    """Why a run trained with config ``old`` cannot continue under ``new``: every changed field
    that changes the result, and epochs fewer than those already trained."""
    problems = []
    for name, (a, b) in config_changes(old, new).items():
        cache_changed = name == "train.cache" and cache_identity(a) != cache_identity(b)
        if name not in RESUMABLE or cache_changed:
            problems.append(f"{name}: {a!r} -> {b!r}")
    epochs = (new.get("train") or {}).get("epochs")
    if isinstance(epochs, int) and epochs < epochs_done:
        problems.append(f"train.epochs: {epochs} is fewer than the {epochs_done} already trained")
    return problems


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDirectory:
    """The directory ``path`` of one run; ``config`` (the resolved run config, as a dict) goes into
    ``config.yaml`` and every checkpoint, and is compared with the checkpoint's on resume."""

    def __init__(self, path: str | Path, config: dict[str, Any] | None = None):
        self.path = Path(path)
        self.config = config or {}
        self._locked = False
        self._scalars: TensorBoardLog | None = None

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def lock_file(self) -> Path:
        return self.path / "run.lock"

    # ---- the lock ---------------------------------------------------------------------------
    def lock(self) -> bool:
        """Take the directory for this process, or fail naming the live process that holds it; a
        lock left by a dead process (a SIGKILL, a power cut) on this host is taken over. Returns
        whether this call took it (False: this object holds it already)."""
        if self._locked:
            return False
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"Run directory {str(self.path)!r} is a file, not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (
                    holder.get("host") != me["host"] or _alive(holder["pid"])
                ):
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
                    raise RunLockedError(
                        f"Run directory {str(self.path)!r} is in use by process {holder['pid']} on "
                        f"{holder['host']} (since {when}); wait for it to finish, stop it, or "
                        "choose another name (--set name=...)"
                    ) from None
                self.lock_file.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return True
        raise RunLockedError(f"Could not lock run directory {str(self.path)!r}")

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.lock_file.read_text())
            return holder if isinstance(holder.get("pid"), int) else None
        except (OSError, ValueError):
            return None  # unreadable: a lock written half by a process that died

    def unlock(self) -> None:
        if self._locked:
            self.lock_file.unlink(missing_ok=True)
            self._locked = False

    def __enter__(self) -> RunDirectory:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()

    # ---- the loop ---------------------------------------------------------------------------
    def holds_run(self) -> bool:
        """Whether a run was started here (its config written), finished or not."""
        return (self.path / "config.yaml").exists() or self.last.exists()

    def read_last(self) -> dict[str, Any] | None:
        """The checkpoint a resume continues from, checked against this run's config: a field
        that changes the result, or fewer epochs than were trained, is refused by name. None when
        there is none."""
        if not self.last.exists():
            return None
        ckpt = read_checkpoint(self.last)
        old = with_defaults(ckpt.get("config") or {})
        problems = resume_conflicts(old, self.config, ckpt.get("epoch", 0))
        if self.config and problems:
            raise CheckpointError(
                f"Cannot resume {str(self.path)!r}: its config changed in fields that change the "
                f"result: {'; '.join(problems)}. Restore them, or start a new run under another "
                "name."
            )
        return ckpt

    @staticmethod
    def resume(ckpt: dict[str, Any], parts: dict[str, Any]) -> LoopState:
        """Load :meth:`read_last`'s checkpoint into ``parts`` (and the RNG states)."""
        return LoopState.from_dict(restore_training_state(ckpt, parts))

    def start(self, state: LoopState, tensorboard: bool = False) -> None:
        """Write ``config.yaml`` and ``metrics.jsonl`` as the state knows it: a kill between the
        log line and the checkpoint, or a fresh start in an old directory, must leave no duplicate
        or orphan epochs. ``tensorboard``: also write each epoch's scalars to ``tensorboard/``
        (:mod:`~kdscope.train.scalar_log`) until :meth:`close_log`."""
        self.path.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            self._scalars = TensorBoardLog(self.path / "tensorboard", state.epoch + 1)
        if self.config:
            text = yaml.safe_dump(self.config, sort_keys=False)
            (self.path / "config.yaml").write_text(text)
        text = "".join(json.dumps(r) + "\n" for r in state.history)
        (self.path / "metrics.jsonl").write_text(text)

    def epoch_end(self, state: LoopState, parts: dict[str, Any], improved: bool) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(state.history[-1]) + "\n")
        if self._scalars is not None:
            self._scalars.write(state.history[-1])
        save_training_state(self.last, parts, state, self.config)
        if improved:
            save_training_state(self.checkpoints / "best.pt", parts, state, self.config)

    def close_log(self) -> None:
        if self._scalars is not None:
            self._scalars.close()
            self._scalars = None

    def interrupted(self, state: LoopState, parts: dict[str, Any]) -> Path:
        """Checkpoint the loop where it stopped (at a step boundary); the path written."""
        save_training_state(self.last, parts, state, self.config)
        return self.last
