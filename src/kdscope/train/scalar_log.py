"""Epoch scalars for the ecosystem's viewers: with ``train.log=tensorboard`` the numbers of every
``metrics.jsonl`` record also go to TensorBoard event files in ``<run>/tensorboard``, one point per
epoch (the record's ``epoch``), through ``torch.utils.tensorboard`` (the optional ``tensorboard``
extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` record by tag: nested sections (the loss ``terms``)
    become ``<section>/<name>``; None values and the epoch itself (the step) are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch" or value is None or isinstance(value, bool):
            continue
        if isinstance(value, dict):
            out |= {f"{key}/{k}": float(v) for k, v in value.items() if isinstance(v, int | float)}
        elif isinstance(value, int | float):
            out[key] = float(value)
    return out


def summary_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError that says what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(
            "train.log=tensorboard needs the tensorboard package: pip install "
            "'kdscope[tensorboard]' (or use train.log=jsonl)"
        ) from None
    return SummaryWriter


def check_scalar_log(log: str, has_run_dir: bool) -> None:
    """Refuse, before any training, a TensorBoard log without a run directory or the package."""
    if log == "tensorboard":
        if not has_run_dir:
            raise ValueError("train.log=tensorboard needs a run directory to write events to")
        summary_writer_class()


class TensorBoardLog:
    """Writes each epoch record's :func:`scalars` to event files in ``directory``.

    ``next_epoch`` is the first epoch this session logs: events an earlier session wrote for it or
    later ones (a kill after the log line, before the checkpoint) are purged by TensorBoard's
    readers, so a resumed run shows each epoch once, as ``metrics.jsonl`` does.
    """

    def __init__(self, directory: str | Path, next_epoch: int = 1):
        self.writer = summary_writer_class()(str(directory), purge_step=next_epoch)

    def write(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
