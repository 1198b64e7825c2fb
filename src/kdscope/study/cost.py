"""What a study will cost before it starts: every run still to train, priced from a few timed
training steps of each student architecture and timed forwards of each teacher."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from kdscope.data import collate, load_data, load_teacher_view
from kdscope.data.transforms import CropFlip
from kdscope.models import create_model, reader
from kdscope.study.config import StudyConfig
from kdscope.study.plan import Plan, PlannedRun

TIMED_STEPS = 3


def _timed(fn: Callable[[], None]) -> float:
    """Median seconds of ``TIMED_STEPS`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(TIMED_STEPS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def estimate(cfg: StudyConfig, plan: Plan, todo: list[PlannedRun]) -> tuple[float, list[str]]:
    """(seconds on one worker, lines that explain them) for training the runs ``todo``. An upper
    bound where early stopping may end runs sooner."""
    if not todo:
        return 0.0, []
    data = load_data(cfg.data)
    x, y, _ = _batch(data, cfg.data.batch_size)
    steps = len(data.train) // cfg.data.batch_size
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        step_s: dict[str, float] = {}
        forward_s: dict[str, float] = {}
        for run in todo:
            arch = run.config.student.name
            if arch not in step_s:
                step_s[arch] = _student_step(arch, data, x, y)
            if run.teacher is not None:
                t_config = plan.runs[run.teacher].config
                t_arch = t_config.student.name
                if t_arch not in forward_s:
                    # A teacher of another representation (cross-representation pairs) is timed
                    # on its own view of the batch.
                    recorded = t_config.data.model_dump(mode="json")
                    view = load_teacher_view(cfg.data, recorded, data)
                    t_x = x if view is None else _batch(view, cfg.data.batch_size)[0]
                    forward_s[t_arch] = _teacher_forward(t_arch, view or data, t_x)
    finally:
        torch.set_num_threads(threads)
    total = 0.0
    shared = set()  # plain caches kept in train.cache_dir: filled once per teacher and method
    for run in todo:
        epochs = run.config.train.epochs
        seconds = epochs * steps * step_s[run.config.student.name]
        if run.teacher is not None:
            forward = forward_s[plan.runs[run.teacher].config.student.name]
            passes = _cached_passes(run, data)
            entry = (run.teacher, run.config.method.name)
            train = run.config.train
            kept = passes == 1 and train.cache != "views" and train.cache_topk is None
            kept = kept and train.cache_dir is not None
            if not (kept and entry in shared):
                seconds += forward * (math.ceil(len(data.train) / len(x)) * passes if passes
                                      else epochs * steps)  # fmt: skip
            if kept:
                shared.add(entry)
        total += seconds
    lines = [f"{len(todo)} run(s) to train, about {total / 3600:.1f} h on one worker"
             + (" (an upper bound: train.early_stop may end runs sooner)"
                if cfg.train.early_stop else "")]  # fmt: skip
    lines += [f"  timed: {arch} step {s * 1e3:.0f} ms" for arch, s in step_s.items()]
    lines += [f"  timed: {arch} teacher forward {s * 1e3:.0f} ms" for arch, s in forward_s.items()]
    return total, lines


def _batch(data, batch_size: int) -> tuple:
    return collate(data.train.__getitems__(list(range(min(batch_size, len(data.train))))))


def _cached_passes(run: PlannedRun, data) -> int:
    """Teacher passes over the training set the run's cache fill makes (0: no cache)."""
    train = run.config.train
    augmented = run.config.data.augment != "none"
    if train.cache == "off" or (augmented and train.cache != "views"):
        return 0
    if train.cache != "views":
        return 1
    if train.views == "all":
        return len(CropFlip().enumerate(tuple(data.train[0][0].shape)))
    return train.views


def _student_step(arch: str, data, x, y) -> float:
    model = create_model(arch, data.num_classes, data.in_channels).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    read = reader(model)

    def step() -> None:
        _, loss = read.train_forward(model, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed(step)


def _teacher_forward(arch: str, data, x) -> float:
    model = create_model(arch, data.num_classes, data.in_channels).eval()

    read = reader(model)

    def forward() -> None:
        with torch.no_grad():
            read.logits(model, x)

    return _timed(forward)
