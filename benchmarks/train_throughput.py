"""Training throughput of kdscope's Trainer against a hand-written KD loop and torchdistill.

    .venv/bin/python benchmarks/train_throughput.py                    # 3 rounds, 5120 examples
    .venv/bin/python benchmarks/train_throughput.py --rounds 5 --train-size 2560

Fashion-MNIST, teacher resnet56 -> student resnet8, batch 128, SGD (momentum 0.9, wd 5e-4), CPU,
2 threads, loss 0.1 * CE + 0.9 * T^2 * KL with T = 4, no validation set. Configurations:

  a    hand-written PyTorch KD loop (teacher in eval mode under no_grad)
  b    kdscope Trainer, method kd, train.cache=off
  c    kdscope Trainer, method kd, train.cache=memory
  c+   as c with the progress bar on, rendered as in a terminal (TTY_COMPATIBLE=1) into /dev/null
  d    kdscope Trainer, method none, no teacher: the student alone, the floor for any KD
  d0   hand-written loop for the student alone (what d would cost without the Trainer)
  e    torchdistill DistillationBox with KDLoss (left out when torchdistill is not installed)

Each run trains ``--epochs`` epochs; its throughput is the mean images/s of every epoch after the
first (kdscope: ``FitResult.history[i]["images_per_s"]``; the others time their epoch loop the same
way, from the first batch fetched to the last optimizer step). Configurations are interleaved in
rounds (a, b, c, ..., a, b, c, ...) because the machine is shared; the table gives each one's median
over rounds. The teacher cache's one-time fill (once per run of c) is reported on its own line.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kdscope.config import OptimConfig, ScheduleConfig, TrainConfig
from kdscope.data import collate, load_data
from kdscope.models import create_model
from kdscope.train import Trainer

TEACHER, STUDENT, BATCH, THREADS = "resnet56", "resnet8", 128, 2
LR, MOMENTUM, WEIGHT_DECAY, TEMPERATURE, ALPHA = 0.05, 0.9, 5e-4, 4.0, 0.9


def _models(with_teacher: bool = True):
    torch.manual_seed(0)
    student = create_model(STUDENT, 10, 1)
    teacher = create_model(TEACHER, 10, 1).eval() if with_teacher else None
    return teacher, student


def _steady(rates: list[float]) -> float:
    """Mean images/s of the epochs after the first (the first pays for warm-up)."""
    return statistics.fmean(rates[1:])


def _sgd(student: torch.nn.Module) -> torch.optim.SGD:
    return torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def run_minimal(train_set: Dataset, epochs: int, distill: bool = True) -> tuple[float, float]:
    """The loop one writes by hand: same data, optimizer and loss as kdscope's ``kd``."""
    teacher, student = _models(distill)
    optimizer = _sgd(student)
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, collate_fn=collate)
    student.train()
    rates = []
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for x, y, _ in loader:
            logits = student(x)
            loss = F.cross_entropy(logits, y)
            if distill:
                with torch.no_grad():
                    t_logits = teacher(x)
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
    return _steady(rates), 0.0


def run_kdscope(
    train_set: Dataset, epochs: int, method: str, cache: str = "off", progress: bool = False
) -> tuple[float, float]:
    teacher, student = _models(method != "none")
    trainer = Trainer(
        student,
        train_set,
        teacher=teacher,
        method=method,
        batch_size=BATCH,
        optim=OptimConfig(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        schedule=ScheduleConfig(name="constant"),
        train=TrainConfig(epochs=epochs, cache=cache, device="cpu", threads=THREADS),
        progress=progress,
    )
    if progress:
        with _fake_terminal():
            result = trainer.fit()
    else:
        result = trainer.fit()
    return _steady([r["images_per_s"] for r in result.history]), result.cache_fill_s


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


def run_torchdistill(train_set: Dataset, epochs: int) -> tuple[float, float]:
    """torchdistill's DistillationBox driven as its image-classification example drives it."""
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
            "alpha": 1 - ALPHA,  # torchdistill's alpha weighs CE: alpha * CE + (1 - alpha) * T^2 * KL
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
        "teacher": {"sequential": [], "requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"sequential": [], "requires_grad": True, "forward_proc": "forward_batch_only"},
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
        teacher, student, {"train": _Pairs(train_set)}, train_config, torch.device("cpu"), None,
        False, 1,
    )
    rates = []
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        seen, start = 0, time.perf_counter()
        for x, y, supp in box.train_data_loader:
            loss = box.forward_process(x, y, supp)
            box.post_forward_process(loss=loss)
            seen += len(y)
        rates.append(seen / (time.perf_counter() - start))
        box.post_epoch_process()
    return _steady(rates), 0.0


CONFIGS = {
    "a": ("hand-written KD loop", lambda d, e: run_minimal(d, e)),
    "b": ("kdscope kd, cache off", lambda d, e: run_kdscope(d, e, "kd")),
    "c": ("kdscope kd, teacher cache", lambda d, e: run_kdscope(d, e, "kd", "memory")),
    "c+": ("kdscope kd, teacher cache, progress bar on",
           lambda d, e: run_kdscope(d, e, "kd", "memory", progress=True)),
    "d": ("kdscope student alone (method none)", lambda d, e: run_kdscope(d, e, "none")),
    "d0": ("hand-written student-alone loop", lambda d, e: run_minimal(d, e, distill=False)),
    "e": ("torchdistill DistillationBox + KDLoss", lambda d, e: run_torchdistill(d, e)),
}


def _has_torchdistill() -> bool:
    try:
        import torchdistill  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=BATCH * 40)
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run these configurations")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    torch.set_num_threads(THREADS)
    import logging

    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    train_set = load_data("fashion-mnist", train_size=args.train_size, seed=0).train
    names = args.only or [k for k in CONFIGS if k != "e" or _has_torchdistill()]
    rates: dict[str, list[float]] = {k: [] for k in names}
    fills: list[float] = []
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    for r in range(args.rounds):
        for k in names:
            rate, fill = CONFIGS[k][1](train_set, args.epochs)
            rates[k].append(rate)
            if fill:
                fills.append(fill)
            print(f"round {r + 1} {k:>2}: {rate:7.1f} img/s", flush=True)
    wall = time.perf_counter() - start
    median = {k: statistics.median(v) for k, v in rates.items()}

    print(f"\n{len(train_set)} examples, {len(train_set) // BATCH} steps per epoch, {args.epochs} "
          f"epochs per run, {args.rounds} rounds, {wall / 60:.1f} min; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {THREADS} threads; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print("| configuration | median img/s | min | max |")
    print("|---|---|---|---|")
    for k in names:
        print(f"| ({k}) {CONFIGS[k][0]} | {median[k]:.0f} | {min(rates[k]):.0f} "
              f"| {max(rates[k]):.0f} |")
    print()
    for num, den, target in (("b", "a", 0.97), ("c", "d", 0.87), ("c+", "c", None),
                             ("d", "d0", None), ("e", "a", None)):
        if num in median and den in median:
            ratio = median[num] / median[den]
            verdict = "" if target is None else (" (target >= %.2f: %s)" % (
                target, "met" if ratio >= target else "MISSED"))
            print(f"- {num}/{den} = {ratio:.3f}{verdict}")
    if fills:
        per_image = statistics.median(fills) / len(train_set) * 1e3
        print(f"- teacher cache fill (once per run of c): median {statistics.median(fills):.2f} s "
              f"for {len(train_set)} examples ({per_image:.2f} ms/example)")


if __name__ == "__main__":
    main()
