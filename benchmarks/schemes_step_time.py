"""Training-step time of the loss-type schemes (dml, byot, adversarial, lwf) relative to kd.

Pair resnet32 -> resnet8, batch 64, 1x28x28 random inputs, 10 classes (lwf: a 5-class teacher).
``--cache off``: the teacher runs every step; ``--cache memory``: its logits are looked up (the
Trainer's default on fixed data). none (labels only, the student alone), dml and byot have no
teacher. Methods are timed in interleaved rounds, in a
shuffled order (one epoch of ``--steps`` steps each), so that load drift on a shared machine hits
them alike; the median epoch gives ms/step.

    python benchmarks/schemes_step_time.py --rounds 7 --steps 10 --threads 1 --cache off
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from kdscope.config import DataConfig, OptimConfig, TrainConfig
from kdscope.methods import create_method
from kdscope.methods.schemes import expand_classes
from kdscope.models import create_model
from kdscope.pipelines import SyntheticSet
from kdscope.train import Trainer

METHODS = ("kd", "none", "dml", "byot", "adversarial", "lwf")


def epoch_ms_per_step(name: str, data: SyntheticSet, batch: int, device: str, cache: str) -> float:
    torch.manual_seed(0)
    if name == "lwf":
        teacher = create_model("resnet32", 5, 1)
        student = expand_classes(create_model("resnet8", 5, 1), 10)
    else:
        teacher = None if name in ("none", "dml", "byot") else create_model("resnet32", 10, 1)
        student = create_model("resnet8", 10, 1)
    trainer = Trainer(
        student,
        data,
        None,
        teacher=teacher,
        method=create_method(name),
        data=DataConfig(batch_size=batch),
        optim=OptimConfig(lr=0.001),  # random data: keep it finite, timing is what counts
        train=TrainConfig(epochs=1, cache=cache, device=device),
        progress=False,
    )
    record = trainer.fit().history[0]
    return 1000 * record["epoch_time_s"] / (len(data) // batch + (len(data) % batch > 0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", choices=("off", "memory"), default="off")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.batch * args.steps
    data = SyntheticSet(torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,)))
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    order = list(METHODS)
    for r in range(args.rounds):
        random.Random(r).shuffle(order)  # no method always runs first or after another
        for name in order:
            times[name].append(epoch_ms_per_step(name, data, args.batch, args.device, args.cache))
    base = statistics.median(times["kd"])
    threads = torch.get_num_threads()
    print(f"threads={threads} batch={args.batch} steps={args.steps} cache={args.cache}")
    print(f"{'method':<12}{'ms/step':>10}{'x kd':>8}")
    for name in METHODS:
        ms = statistics.median(times[name])
        print(f"{name:<12}{ms:>10.1f}{ms / base:>8.2f}")


if __name__ == "__main__":
    main()
