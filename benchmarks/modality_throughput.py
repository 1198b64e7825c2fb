"""KD with the teacher cache against the student alone, on audio (FSDD) and text (SST-2).

    .venv/bin/python benchmarks/modality_throughput.py                  # 3 rounds, both data sets
    .venv/bin/python benchmarks/modality_throughput.py --data sst2 --rounds 5
    .venv/bin/python benchmarks/modality_throughput.py --tiny           # a check that it runs

Pairs: FSDD log-mel spectrograms (1 x 64 x 101), teacher resnet56 -> student resnet8; SST-2 token
ids, teacher minilm (all-MiniLM-L6-v2 with a head, 22.6M parameters) -> student bilstm (Tang et
al. 2019). Teachers and students are untrained (speed does not depend on the weights). Batch 128
(SST-2: length-sorted within the batch as the loader pads them), SGD, no validation set, no
augmentation, CPU with ``--threads`` threads (default 2), ``--epochs`` epochs of which the first
is warm-up. Configurations:

  student   the student alone (method none, no teacher): the floor for any KD
  kd-cache  method kd (T = 4), train.cache=memory: the teacher runs once over the training split
  kd-live   method kd with train.cache=off: the teacher runs every step (its cost)

The measure is kdscope's own ``images_per_s`` of the epochs after the first (median over them),
and the cache's one-time fill (``FitResult.cache_fill_s``) is reported as the teacher's cost with
kd-live's throughput. Every run is a fresh process and configurations are interleaved in rounds
(the machine is shared); the table gives each configuration's median over rounds. Target: kd-cache
>= 0.9 x student on each data set. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

from kdscope.config import DataConfig, TrainConfig
from kdscope.data import load_data
from kdscope.models import create_model
from kdscope.train import Trainer

PAIRS = {"fsdd": ("resnet56", "resnet8"), "sst2": ("minilm", "bilstm")}
TINY_PAIRS = {"fsdd": ("resnet8", "resnet8"), "sst2": ("textcnn", "bilstm")}
CONFIGS = ("student", "kd-cache", "kd-live")
BATCH = 128


def one_run(data: str, config: str, args) -> dict:
    """Train one configuration in this process; its throughput and cache fill as a dict."""
    torch.set_num_threads(args.threads)
    teacher_name, student_name = (TINY_PAIRS if args.tiny else PAIRS)[data]
    bundle = load_data(data, train_size=args.train_size, val_fraction=0.0, seed=0)
    student = create_model(student_name, bundle.num_classes, bundle.in_channels)
    teacher = None
    if config != "student":
        teacher = create_model(teacher_name, bundle.num_classes, bundle.in_channels)
    cache = {"student": "off", "kd-cache": "memory", "kd-live": "off"}[config]
    trainer = Trainer(
        student,
        bundle.train,
        None,
        teacher=teacher,
        method="none" if teacher is None else "kd",
        data=DataConfig(name=data, batch_size=BATCH, eval_batch_size=256),
        train=TrainConfig(epochs=args.epochs, device="cpu", cache=cache, amp=False),
        progress=False,
    )
    fit = trainer.fit()
    later = [h["images_per_s"] for h in fit.history[1:]] or [fit.history[-1]["images_per_s"]]
    return {"images_per_s": statistics.median(later), "cache_fill_s": fit.cache_fill_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=2560)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="small models and data: a check")
    parser.add_argument("--one", nargs=2, metavar=("DATA", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.rounds, args.epochs, args.train_size = 1, 2, 256
    if args.one:
        print(json.dumps(one_run(*args.one, args)))
        return
    passed = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in (
            ("epochs", args.epochs),
            ("train_size", args.train_size),
            ("threads", args.threads),
        )
    ]
    results: dict[tuple[str, str], list[dict]] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for _ in range(args.rounds):
        for data in args.data:
            for config in CONFIGS:
                cmd = [sys.executable, __file__, "--one", data, config, *passed]
                cmd += ["--tiny"] if args.tiny else []
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                results.setdefault((data, config), []).append(
                    json.loads(done.stdout.splitlines()[-1])
                )
    print(
        "| data | teacher -> student | student alone (img/s) | kd, cache (img/s) | ratio | "
        "kd, teacher live (img/s) | cache fill (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for data in args.data:
        med = {c: statistics.median(r["images_per_s"] for r in results[data, c]) for c in CONFIGS}
        fill = statistics.median(r["cache_fill_s"] for r in results[data, "kd-cache"])
        teacher, student = (TINY_PAIRS if args.tiny else PAIRS)[data]
        print(
            f"| {data} | {teacher} -> {student} | {med['student']:.0f} | {med['kd-cache']:.0f} | "
            f"{med['kd-cache'] / med['student']:.2f} | {med['kd-live']:.0f} | {fill:.1f} |"
        )


if __name__ == "__main__":
    main()
