"""Training-step time of every classification method relative to vanilla ``kd`` (issue 6).

    .venv/bin/python benchmarks/method_step_time.py                    # all methods, 5 rounds
    .venv/bin/python benchmarks/method_step_time.py --only kd crd crcd --rounds 3

Pair resnet32 -> resnet8, Fashion-MNIST 1x28x28, batch 64, SGD, one CPU thread. Each method runs
through the real :class:`~kdscope.train.Trainer` with ``train.cache=off``, so every teacher-based
method pays the teacher's forward pass on every step, as ``kd`` does. The training split holds
``--train-size`` examples (20,000 by default: CRD's bank must exceed its K = 16,384 negatives, or K
would be capped); a run is stopped after ``--warmup + --steps`` steps through the Trainer's own
between-steps stop, and only the last ``--steps`` count.

Timing: ``Trainer._step`` (forward of student and teacher, the method's loss, backward, optimizer
step) is wrapped to read ``time.process_time()`` around each call. With one thread, process CPU
time barely moves when other processes share the machine, where wall time would. Methods are
interleaved in rounds, the order rotated each round; a method's ms/step is the median over rounds
of its per-round median, and its ratio to ``kd`` the median over rounds of the per-round ratios.

Special pairs, as their algorithms require: ``dml`` and ``byot`` have no teacher (``dml`` trains one
resnet8 peer beside the student); ``lwf``'s teacher predicts 5 classes (the old task);
``multi_teacher`` distills from two resnet32 teachers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from typing import Any

import torch
from torch.utils.data import Dataset

from kdscope.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from kdscope.data import load_data
from kdscope.methods import METHODS, create_method
from kdscope.models import create_model
from kdscope.train import Trainer

TEACHER, STUDENT, CLASSES = "resnet32", "resnet8", 10
NO_TEACHER = ("none", "dml", "byot")


def models(name: str) -> dict[str, Any]:
    """Teacher(s) and student for ``name``, as its algorithm requires (see the module docstring)."""
    torch.manual_seed(0)
    student = create_model(STUDENT, CLASSES, 1)
    if name in NO_TEACHER:
        return {"student": student, "teacher": None}
    if name == "lwf":
        return {"student": student, "teacher": create_model(TEACHER, CLASSES // 2, 1)}
    if name == "multi_teacher":
        return {"student": student, "teacher": [create_model(TEACHER, CLASSES, 1) for _ in "ab"]}
    return {"student": student, "teacher": create_model(TEACHER, CLASSES, 1)}


def step_times(name: str, train_set: Dataset, batch: int, warmup: int, steps: int) -> list[float]:
    """Process CPU seconds of each of the ``steps`` training steps after ``warmup`` steps."""
    built = models(name)
    trainer = Trainer(
        built["student"],
        train_set,
        teacher=built["teacher"],
        method=create_method(name),
        data=DataConfig(batch_size=batch),
        optim=OptimConfig(lr=0.01),
        schedule=ScheduleConfig(name="constant"),
        train=TrainConfig(epochs=1, cache="off", device="cpu", threads=1, amp=False),
        progress=False,
    )
    times: list[float] = []
    step = trainer._step

    def timed(*args):
        start = time.process_time()
        out = step(*args)
        times.append(time.process_time() - start)
        if len(times) == warmup + steps:
            trainer._stop_requested = True  # what Ctrl-C sets: stop before the next step
        return out

    trainer._step = timed
    with contextlib.suppress(KeyboardInterrupt):  # the stop asked for above
        trainer.fit()
    if len(times) < warmup + steps:
        raise ValueError(
            f"{len(train_set)} examples give {len(times)} steps of {batch}; "
            f"--warmup + --steps = {warmup + steps}"
        )
    return times[warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--only", nargs="+", choices=METHODS.names(), help="these methods (+ kd)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    names = ["kd"] + [m for m in (args.only or METHODS.names()) if m != "kd"]
    train_set = load_data("fashion-mnist", train_size=args.train_size, seed=0).train
    per_round: dict[str, list[float]] = {m: [] for m in names}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            ms = 1e3 * statistics.median(
                step_times(name, train_set, args.batch, args.warmup, args.steps)
            )
            per_round[name].append(ms)
            print(f"round {r + 1} {name:<15}{ms:8.1f} ms/step", flush=True)
    wall = time.perf_counter() - start

    print(
        f"\n{TEACHER} -> {STUDENT}, Fashion-MNIST 1x28x28, batch {args.batch}, cache off, "
        f"{args.steps} timed steps after {args.warmup} per run, {args.rounds} rounds, "
        f"{wall / 60:.1f} min; process CPU time, 1 thread; torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    print("| method | ms/step (CPU) | x kd | min-max x kd over rounds |")
    print("|---|---|---|---|")
    rows = []
    for name in names:
        ratios = [m / k for m, k in zip(per_round[name], per_round["kd"], strict=True)]
        rows.append((statistics.median(ratios), name, statistics.median(per_round[name]), ratios))
    for ratio, name, ms, ratios in sorted(rows):
        flag = " **over 1.5**" if ratio > 1.5 else ""
        print(f"| {name} | {ms:.1f} | {ratio:.2f}{flag} | {min(ratios):.2f}-{max(ratios):.2f} |")


if __name__ == "__main__":
    main()
