"""Training throughput of kdscope's Trainer against a hand-written KD loop and torchdistill.

    .venv/bin/python benchmarks/train_throughput.py                    # 3 rounds, 5120 examples
    .venv/bin/python benchmarks/train_throughput.py --rounds 5 --train-size 2560 --only a b

Fashion-MNIST, teacher resnet56 -> student resnet8 (both untrained: speed does not depend on the
weights), batch 128, SGD (momentum 0.9, wd 5e-4), CPU, 2 threads (``--threads``), loss
0.1 * CE + 0.9 * T^2 * KL with T = 4, no validation set. Configurations:

  a    hand-written PyTorch KD loop (teacher in eval mode under no_grad, run before the student)
  a2   as a with the student's forward first, as mdistiller orders it (only with ``--only``)
  b    kdscope Trainer, method kd, train.cache=off
  c    kdscope Trainer, method kd, train.cache=memory
  c+   as c with the progress bar on, drawn as in a terminal (TTY_COMPATIBLE=1) into /dev/null
  d    kdscope Trainer, method none, no teacher: the student alone, the floor for any KD
  d0   hand-written loop for the student alone (d without the Trainer)
  e    torchdistill DistillationBox with KDLoss (left out when torchdistill is not installed)
  b-aug, c-views, c-all, d-aug   with the standard augmentation (pad-crop + flip): kd with the
       teacher run every step, kd with the view cache (4 views; all 98 views), the student alone
       (only with ``--only``)

Each run trains ``--epochs`` epochs and the first is warm-up. Two measures of the later epochs:

  step   128 / the median wall time between successive training batches (a whole step: fetch,
         forward, backward, update). Taken without touching the Trainer: the dataset records when
         each training batch is fetched (the loops written here record it themselves). The median
         shrugs off a step that another process preempted.
  cpu    128 / the median process CPU time (all threads) between successive batches: the work a
         step does, which depends far less than wall time on what else the machine runs.
  epoch  images / epoch wall time, kdscope's own ``FitResult.history[i]["images_per_s"]`` (the
         other loops time their epoch the same way): includes per-epoch costs, and every stall.

Every run is a fresh process: how much glibc malloc maps and unmaps (page faults are a large share
of a step on CPU) depends on the heap's history, so runs sharing a process were not comparable.
Configurations are interleaved in rounds (a, b, c, ..., a, b, c, ...) because the machine is shared;
the table gives each measure's median over rounds; the targets are judged on the step measure.
The teacher cache's one-time fill (once per run of c and c+) is reported on its own line.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kdscope.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from kdscope.data import collate, get_augment, load_data
from kdscope.models import create_model
from kdscope.train import Trainer

TEACHER, STUDENT, BATCH = "resnet56", "resnet8", 128
LR, MOMENTUM, WEIGHT_DECAY, TEMPERATURE, ALPHA = 0.05, 0.9, 5e-4, 4.0, 0.9


@dataclasses.dataclass
class Run:
    step: float  # images/s from the median step of the epochs after the first
    cpu: float  # images per CPU-second (all threads) from the median step's CPU time
    epoch: float  # images/s over the epochs after the first, wall time
    cache_fill_s: float = 0.0


class _Clocked(Dataset):
    """The training split, noting when each training batch (``batch`` items) is fetched."""

    def __init__(self, dataset: Dataset, batch: int):
        self.dataset, self.batch = dataset, batch
        self.stamps: list[tuple[float, float]] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int]):
        if len(indices) == self.batch:  # not the teacher cache's fill, which reads larger batches
            self.stamps.append(_now())
        return self.dataset.__getitems__(indices)


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _run(
    stamps: list[tuple[float, float]], epoch_rates: list[float], steps: int, fill: float = 0.0
) -> Run:
    """Measures of the epochs after the first (``steps`` batches per epoch)."""
    later = stamps[steps:]
    wall, cpu = ([b[i] - a[i] for a, b in zip(later, later[1:], strict=False)] for i in (0, 1))
    return Run(
        BATCH / statistics.median(wall),
        BATCH / statistics.median(cpu),
        statistics.fmean(epoch_rates[1:]),
        fill,
    )


def _models(with_teacher: bool = True):
    torch.manual_seed(0)
    student = create_model(STUDENT, 10, 1)
    teacher = create_model(TEACHER, 10, 1).eval() if with_teacher else None
    return teacher, student


def run_minimal(
    train_set: Dataset, epochs: int, distill: bool = True, teacher_first: bool = True
) -> Run:
    """The loop one writes by hand: same data, optimizer and loss as kdscope's ``kd``."""
    teacher, student = _models(distill)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, collate_fn=collate)
    student.train()
    stamps, rates = [], []
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for x, y, _ in loader:
            stamps.append(_now())
            if distill and teacher_first:
                with torch.no_grad():
                    t_logits = teacher(x)
            logits = student(x)
            loss = F.cross_entropy(logits, y)
            if distill and not teacher_first:
                with torch.no_grad():
                    t_logits = teacher(x)
            if distill:
                kl = F.kl_div(
                    F.log_softmax(logits / TEMPERATURE, dim=1),
                    F.log_softmax(t_logits / TEMPERATURE, dim=1),
                    reduction="batchmean",
                    log_target=True,
                )
                loss = (1 - ALPHA) * loss + ALPHA * TEMPERATURE**2 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        rates.append(seen / (time.perf_counter() - start))
    return _run(stamps, rates, len(loader))


def run_kdscope(
    train_set: Dataset,
    epochs: int,
    method: str,
    cache: str = "off",
    progress: bool = False,
    augment: str | None = None,
    views: int | str = 4,
) -> Run:
    teacher, student = _models(method != "none")
    clocked = _Clocked(train_set, BATCH)
    trainer = Trainer(
        student,
        clocked,
        teacher=teacher,
        method=method,
        augment=get_augment(augment) if augment else None,
        data=DataConfig(batch_size=BATCH),
        optim=OptimConfig(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        schedule=ScheduleConfig(name="constant"),
        train=TrainConfig(
            epochs=epochs, cache=cache, views=views, device="cpu", threads=torch.get_num_threads()
        ),
        progress=progress,
    )
    with _fake_terminal() if progress else contextlib.nullcontext():
        result = trainer.fit()
    rates = [r["images_per_s"] for r in result.history]
    return _run(clocked.stamps, rates, len(train_set) // BATCH, result.cache_fill_s)


@contextlib.contextmanager
def _fake_terminal():
    """Make rich draw the bar as it would in a terminal, into /dev/null, so its cost is paid."""
    previous = os.environ.get("TTY_COMPATIBLE")
    os.environ["TTY_COMPATIBLE"] = "1"
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        if previous is None:
            del os.environ["TTY_COMPATIBLE"]
        else:
            os.environ["TTY_COMPATIBLE"] = previous


class _Pairs(Dataset):
    """The kdscope split as plain ``(image, label)`` items, the form torchdistill expects."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y, _ = self.dataset[i]
        return x, y


def run_torchdistill(train_set: Dataset, epochs: int) -> Run:
    """torchdistill's DistillationBox, driven as its image-classification example drives it."""
    from torchdistill.core.distillation import get_distillation_box

    teacher, student = _models()
    kd_loss = {
        "key": "KDLoss",
        "kwargs": {
            "student_module_path": ".",
            "student_module_io": "output",
            "teacher_module_path": ".",
            "teacher_module_io": "output",
            "temperature": TEMPERATURE,
            "alpha": 1 - ALPHA,  # torchdistill's alpha weighs CE: alpha * CE + (1 - alpha) * T^2 KL
            "reduction": "batchmean",
        },
    }
    train_config = {
        "num_epochs": epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": BATCH, "num_workers": 0},
        },
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only"},
        "optimizer": {
            "key": "SGD",
            "kwargs": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        },
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {"sub_terms": {"kd": {"criterion": kd_loss, "weight": 1.0}}},
        },
    }
    box = get_distillation_box(
        teacher,
        student,
        {"train": _Pairs(train_set)},
        train_config,
        torch.device("cpu"),
        device_ids=None,
        distributed=False,
        lr_factor=1,
    )
    stamps, rates = [], []
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        seen, start = 0, time.perf_counter()
        for x, y, supp in box.train_data_loader:
            stamps.append(_now())
            loss = box.forward_process(x, y, supp)
            box.post_forward_process(loss=loss)
            seen += len(y)
        rates.append(seen / (time.perf_counter() - start))
        box.post_epoch_process()
    return _run(stamps, rates, len(box.train_data_loader))


CONFIGS = {
    "a": ("hand-written KD loop", lambda d, e: run_minimal(d, e)),
    "a2": (
        "hand-written KD loop, student forward first",
        lambda d, e: run_minimal(d, e, teacher_first=False),
    ),
    "b": ("kdscope kd, cache off", lambda d, e: run_kdscope(d, e, "kd")),
    "c": ("kdscope kd, teacher cache", lambda d, e: run_kdscope(d, e, "kd", "memory")),
    "c+": (
        "kdscope kd, teacher cache, progress bar on",
        lambda d, e: run_kdscope(d, e, "kd", "memory", progress=True),
    ),
    "d": ("kdscope student alone (method none)", lambda d, e: run_kdscope(d, e, "none")),
    "d0": ("hand-written student-alone loop", lambda d, e: run_minimal(d, e, distill=False)),
    "e": ("torchdistill DistillationBox + KDLoss", run_torchdistill),
    "b-aug": (
        "kdscope kd, standard augmentation, teacher run every step",
        lambda d, e: run_kdscope(d, e, "kd", "off", augment="standard"),
    ),
    "c-views": (
        "kdscope kd, standard augmentation, view cache (4 views)",
        lambda d, e: run_kdscope(d, e, "kd", "views", augment="standard"),
    ),
    "c-all": (
        "kdscope kd, standard augmentation, view cache (all 98 views)",
        lambda d, e: run_kdscope(d, e, "kd", "views", augment="standard", views="all"),
    ),
    "d-aug": (
        "kdscope student alone, standard augmentation",
        lambda d, e: run_kdscope(d, e, "none", augment="standard"),
    ),
}
DEFAULT = ["a", "b", "c", "c+", "d", "d0", "e"]
RATIOS = [
    ("a2", "a", None),
    ("b", "a", 0.97),
    ("c", "d", 0.87),
    ("e", "a", None),
    ("c+", "c", None),
    ("d", "d0", None),
    ("c-views", "d-aug", 0.9),
    ("c-views", "b-aug", 2.5),
    ("c-all", "d-aug", 0.9),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=BATCH * 40, help="a multiple of 128")
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run only these")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    if args.train_size % BATCH or args.train_size < 3 * BATCH:
        parser.error(f"--train-size must be a multiple of {BATCH}, at least {3 * BATCH}")
    if args.worker:
        torch.set_num_threads(args.threads)
        logging.getLogger("torchdistill").setLevel(logging.WARNING)
        train_set = load_data("fashion-mnist", train_size=args.train_size, seed=0).train
        print(json.dumps(dataclasses.asdict(CONFIGS[args.worker][1](train_set, args.epochs))))
        return
    names = args.only or [
        k for k in DEFAULT if k != "e" or importlib.util.find_spec("torchdistill")
    ]
    base = [
        sys.executable,
        __file__,
        "--train-size",
        str(args.train_size),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
    ]
    runs: dict[str, list[Run]] = {k: [] for k in names}
    load_before, start = os.getloadavg()[0], time.perf_counter()
    for r in range(args.rounds):
        for k in names:
            out = subprocess.run([*base, "--worker", k], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"configuration {k} failed:\n{out.stderr}")
            run = Run(**json.loads(out.stdout.splitlines()[-1]))
            runs[k].append(run)
            print(
                f"round {r + 1} {k:>2}: step {run.step:6.1f} img/s, cpu {run.cpu:6.1f} img/cpu-s, "
                f"epoch {run.epoch:6.1f} img/s",
                flush=True,
            )
    minutes = (time.perf_counter() - start) / 60

    def median(k: str, measure: str) -> float:
        return statistics.median(getattr(run, measure) for run in runs[k])

    print(
        f"\n{args.train_size} examples, {args.train_size // BATCH} steps per epoch, {args.epochs} "
        f"epochs per run, {args.rounds} rounds, {minutes:.1f} min; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    print("| configuration | img/s (step) | range over rounds | img/cpu-s (cpu) | img/s (epoch) |")
    print("|---|---|---|---|---|")
    for k in names:
        steps = [run.step for run in runs[k]]
        print(
            f"| ({k}) {CONFIGS[k][0]} | {median(k, 'step'):.0f} | {min(steps):.0f}-"
            f"{max(steps):.0f} | {median(k, 'cpu'):.0f} | {median(k, 'epoch'):.0f} |"
        )
    print()
    for num, den, target in RATIOS:
        if num in runs and den in runs:
            step, cpu, epoch = (median(num, m) / median(den, m) for m in ("step", "cpu", "epoch"))
            verdict = ""
            if target is not None:
                verdict = f"; target >= {target:.2f}: {'met' if step >= target else 'MISSED'}"
            print(
                f"- {num}/{den}: {step:.3f} (step), {cpu:.3f} (cpu), {epoch:.3f} (epoch){verdict}"
            )
    fills = [run.cache_fill_s for k in names for run in runs[k] if run.cache_fill_s]
    if fills:
        fill = statistics.median(fills)
        print(
            f"- teacher cache fill, once per run: median {fill:.2f} s for {args.train_size} "
            f"examples ({fill / args.train_size * 1e3:.2f} ms per example)"
        )


if __name__ == "__main__":
    main()
