"""What the retention probe (``train.probe=N``) costs, as a share of a training epoch; target <= 5%.

    .venv/bin/python benchmarks/probe_cost.py                     # Fashion-MNIST, N = 500, 1000
    .venv/bin/python benchmarks/probe_cost.py --data digits --train-size 256 --probe 32 --epochs 2

Teacher resnet56 -> student resnet8 (both untrained: speed does not depend on the weights), method
kd with the teacher cache (``train.cache=memory``: the cheapest epoch, so the probe's largest
share), batch 128, no augmentation, ``--threads`` threads on the CPU unless ``--device`` says
otherwise. The probe scores agreement (all / C / I), AOA and minibatch CKA at the three stages of
both models. For each N in ``--probe`` (and 0, the run without a probe), configurations are
interleaved over ``--rounds`` rounds, each a fresh Trainer of ``--epochs`` epochs, the first epoch
being warm-up. Two measures over the later epochs, medians over epochs and rounds:

  probe/epoch   the probe's own time (``probe_time_s`` in metrics.jsonl: the student's forward
                over the probe, the metrics and the CKA Gram matrices) over the epoch's training
                time (``epoch_time_s``), from the same epochs
  fit           (the whole fit's wall time with the probe - without, the teacher cache's fill
                left out) / (epochs x the median epoch training time without): everything the
                probe adds, its one-time set-up (the teacher's probe outputs) included, spread
                over the epochs; noisier. A first run, not counted, warms the process up.

The teacher's probe outputs, computed once per run, are also timed on their own line. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import load_data
from kdscope.models import create_model
from kdscope.train import Trainer
from kdscope.train.probe import Probe

TEACHER, STUDENT, BATCH = "resnet56", "resnet8", 128


def one_run(data, probe: int, epochs: int, device: str, seed: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    teacher = create_model(TEACHER, data.num_classes, data.in_channels).eval()
    student = create_model(STUDENT, data.num_classes, data.in_channels)
    trainer = Trainer(
        student,
        data.train,
        data.val,
        teacher=teacher,
        method="kd",
        data=DataConfig(batch_size=BATCH),
        train=TrainConfig(
            epochs=epochs, cache="memory", probe=probe, device=device, seed=seed, amp=False
        ),
        progress=False,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    fit_s = time.perf_counter() - t0 - result.cache_fill_s
    history = result.history
    return {
        "train": [r["epoch_time_s"] for r in history[1:]],
        "probe": [r.get("probe_time_s", 0.0) for r in history[1:]],
        "fit": [fit_s],
    }


def teacher_setup_s(data, probe: int, device: str) -> float:
    teacher = create_model(TEACHER, data.num_classes, data.in_channels).to(device).eval()
    student = create_model(STUDENT, data.num_classes, data.in_channels).to(device)
    t0 = time.perf_counter()
    Probe(teacher, student, data.val, probe, 0, device=torch.device(device))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--train-size", type=int, default=None, help="default: the whole split")
    parser.add_argument("--probe", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(args.data, train_size=args.train_size, val_fraction=0.1)
    sizes = [0, *args.probe]
    runs: dict[int, list[dict[str, list[float]]]] = {n: [] for n in sizes}
    one_run(data, 0, 1, args.device, seed=0)  # warm-up: the first run in a process is slower
    for r in range(args.rounds):
        for n in sizes:
            runs[n].append(one_run(data, n, args.epochs, args.device, seed=r))

    def median(n: int, key: str) -> float:
        return statistics.median(v for run in runs[n] for v in run[key])

    base_train, base_fit = median(0, "train"), median(0, "fit")
    print(
        f"{args.data}: {len(data.train)} training examples, {len(data.val)} validation, "
        f"{TEACHER} -> {STUDENT}, kd, batch {BATCH}, {args.device}, {args.threads} threads, "
        f"{args.epochs} epochs x {args.rounds} rounds (first epoch warm-up)\n"
    )
    print("| probe N | epoch train s | probe s | probe/epoch | fit | probe/epoch <= 5% |")
    print("|---|---|---|---|---|---|")
    for n in sizes:
        train_s, probe_s = median(n, "train"), median(n, "probe")
        share = probe_s / train_s
        extra = (median(n, "fit") - base_fit) / (args.epochs * base_train)
        ok = "yes" if share <= 0.05 else "no"
        print(f"| {n} | {train_s:.2f} | {probe_s:.3f} | {share:.2%} | {extra:+.2%} | {ok} |")
    for n in args.probe:
        print(f"\nteacher's probe outputs, once per run (N = {n}): "
              f"{teacher_setup_s(data, n, args.device):.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
