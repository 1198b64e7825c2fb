"""Token-level distillation throughput: kdscope's Trainer against a hand-written loop, on Tiny
Shakespeare (issue 13's speed targets).

    .venv/bin/python benchmarks/lm_distil_speed.py                        # 3 rounds, 640 blocks
    .venv/bin/python benchmarks/lm_distil_speed.py --rounds 1 --train-size 96 --only a b

Teacher gpt-mini -> student gpt-micro (both untrained: speed does not depend on the weights),
blocks of 128 characters, batch 32, AdamW (lr 3e-3, no weight decay), CPU, ``--threads`` threads,
loss 0.1 * CE + 0.9 * T^2 * KL per position with T = 1, no validation set. Configurations:

  a      hand-written token-level KD loop (teacher in eval mode under no_grad, run first)
  b      kdscope Trainer, method kd, train.cache=off (the teacher run every step)
  c      kdscope Trainer, method kd, train.cache=memory (full distributions, float32)
  c-top  kdscope Trainer, method kd, train.cache_topk=8 in float16
  d      kdscope Trainer, method none, no teacher: the student alone, the floor for any KD

Targets: b/a >= 0.97 (the Trainer costs nothing over a hand-written loop) and c/d, c-top/d >=
0.9 (with the cache, distilling costs little more than training alone). Each run trains
``--epochs`` epochs and the first is warm-up; the measure is tokens per second from the median
wall time between successive training batches of the later epochs (the dataset records when each
batch is fetched), its median over rounds. Every run is a fresh process, configurations
interleaved in rounds. Also prints the teacher cache's bytes per position. Prints Markdown for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
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
from kdscope.data import collate, load_data
from kdscope.methods import create_method
from kdscope.methods.topk import topk_bytes_per_token
from kdscope.models import create_model
from kdscope.train import Trainer

TEACHER, STUDENT, BATCH, BLOCK, VOCAB = "gpt-mini", "gpt-micro", 32, 128, 65
LR, TEMPERATURE, ALPHA, TOP_K = 3e-3, 1.0, 0.9, 8


class _Clocked(Dataset):
    """The training split, noting when each training batch (``BATCH`` blocks) is fetched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.stamps: list[float] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int]):
        if len(indices) == BATCH:  # not the teacher cache's fill, which reads larger batches
            self.stamps.append(time.perf_counter())
        return self.dataset.__getitems__(indices)


def _tokens_per_s(stamps: list[float], steps: int) -> float:
    later = stamps[steps:]
    return BATCH * BLOCK / statistics.median(b - a for a, b in zip(later, later[1:], strict=False))


def _models(with_teacher: bool):
    torch.manual_seed(0)
    student = create_model(STUDENT, VOCAB, 1)
    teacher = create_model(TEACHER, VOCAB, 1).eval() if with_teacher else None
    return teacher, student


def run_minimal(train_set: Dataset, epochs: int) -> float:
    """The loop one writes by hand: same data, optimizer and loss as kdscope's ``kd``."""
    teacher, student = _models(True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    clocked = _Clocked(train_set)
    loader = DataLoader(clocked, batch_size=BATCH, shuffle=True, collate_fn=collate)
    student.train()
    for _ in range(epochs):
        for x, y, _ in loader:
            with torch.no_grad():
                t_logits = teacher(x)
            logits = student(x)
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            kl = F.kl_div(
                F.log_softmax(logits.flatten(0, 1) / TEMPERATURE, dim=1),
                F.log_softmax(t_logits.flatten(0, 1) / TEMPERATURE, dim=1),
                reduction="batchmean",
                log_target=True,
            )
            loss = (1 - ALPHA) * ce + ALPHA * TEMPERATURE**2 * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return _tokens_per_s(clocked.stamps, len(loader))


def run_kdscope(train_set: Dataset, epochs: int, method: str, **cache) -> float:
    teacher, student = _models(method != "none")
    clocked = _Clocked(train_set)
    params = {"temperature": TEMPERATURE, "alpha": ALPHA} if method == "kd" else {}
    trainer = Trainer(
        student,
        clocked,
        teacher=teacher,
        method=create_method(method, **params),
        data=DataConfig(batch_size=BATCH),
        optim=OptimConfig(name="adamw", lr=LR, weight_decay=0.0),
        schedule=ScheduleConfig(name="constant"),
        train=TrainConfig(epochs=epochs, device="cpu", threads=torch.get_num_threads(), **cache),
        progress=False,
    )
    trainer.fit()
    return _tokens_per_s(clocked.stamps, len(train_set) // BATCH)


CONFIGS = {
    "a": ("hand-written token-level KD loop", lambda d, e: run_minimal(d, e)),
    "b": ("kdscope kd, cache off", lambda d, e: run_kdscope(d, e, "kd", cache="off")),
    "c": ("kdscope kd, full teacher cache", lambda d, e: run_kdscope(d, e, "kd", cache="memory")),
    "c-top": (
        f"kdscope kd, top-{TOP_K} teacher cache (float16)",
        lambda d, e: run_kdscope(d, e, "kd", cache_topk=TOP_K, cache_dtype="float16"),
    ),
    "d": ("kdscope student alone (method none)", lambda d, e: run_kdscope(d, e, "none")),
}
RATIOS = [("b", "a", 0.97), ("c", "d", 0.9), ("c-top", "d", 0.9)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--train-size", type=int, default=BATCH * 20, help="blocks, a multiple of 32"
    )
    parser.add_argument("--epochs", type=int, default=2, help="per run; the first is warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="run only these")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")
    if args.train_size % BATCH or args.train_size < 3 * BATCH:
        parser.error(f"--train-size must be a multiple of {BATCH}, at least {3 * BATCH}")
    if args.worker:
        torch.set_num_threads(args.threads)
        data = load_data("tinyshakespeare", train_size=args.train_size, block_size=BLOCK)
        print(json.dumps(CONFIGS[args.worker][1](data.train, args.epochs)))
        return
    names = args.only or list(CONFIGS)
    base = [sys.executable, __file__, "--train-size", str(args.train_size),
            "--epochs", str(args.epochs), "--threads", str(args.threads)]  # fmt: skip
    runs: dict[str, list[float]] = {k: [] for k in names}
    start = time.perf_counter()
    for r in range(args.rounds):
        for k in names:
            out = subprocess.run([*base, "--worker", k], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"configuration {k} failed:\n{out.stderr}")
            runs[k].append(json.loads(out.stdout.splitlines()[-1]))
            print(f"round {r + 1} {k:>5}: {runs[k][-1]:8.0f} tokens/s", flush=True)
    print(
        f"\n{args.train_size} blocks of {BLOCK}, {args.train_size // BATCH} steps per epoch, "
        f"{args.epochs} epochs per run, {args.rounds} rounds, "
        f"{(time.perf_counter() - start) / 60:.1f} min; torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads\n"
    )
    print("| configuration | tokens/s (median step) | range over rounds |")
    print("|---|---|---|")
    for k in names:
        print(f"| ({k}) {CONFIGS[k][0]} | {statistics.median(runs[k]):.0f} | "
              f"{min(runs[k]):.0f}-{max(runs[k]):.0f} |")  # fmt: skip
    print()
    for num, den, target in RATIOS:
        if num in runs and den in runs:
            ratio = statistics.median(runs[num]) / statistics.median(runs[den])
            verdict = "met" if ratio >= target else "MISSED"
            print(f"- {num}/{den}: {ratio:.3f}; target >= {target:.2f}: {verdict}")
    print(
        f"\nTeacher cache per position at vocabulary {VOCAB}: full float32 {4 * VOCAB} bytes, "
        f"full float16 {2 * VOCAB} bytes, top-{TOP_K} float16 "
        f"{topk_bytes_per_token(TOP_K, VOCAB, torch.float16)} bytes."
    )


if __name__ == "__main__":
    main()
