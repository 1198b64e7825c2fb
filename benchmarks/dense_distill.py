"""Training throughput of ``kdscope distill`` on dense tasks against hand-written loops (issue 14).

    .venv/bin/python benchmarks/dense_distill.py                       # both tasks, 3 epochs
    .venv/bin/python benchmarks/dense_distill.py --task detection --num-train 512 --epochs 2

fmnist-scenes (64 x 64 by default), teacher ``*_resnet20`` -> student ``*_resnet8`` (untrained:
speed does not depend on the weights), batch 32, SGD (momentum 0.9, wd 5e-4), no validation set.
Segmentation distils with ``pixel_kd`` (CE + 10 * per-pixel KL at T = 1), detection with ``cwd``
on the two FPN levels (FCOS's own losses + 3 * channel-wise KL at T = 4, teacher features read at
the same levels). Configurations:

  a    hand-written PyTorch loop: the same torchvision FCN / FCOS models, teacher under no_grad
       first, the same loss written out (forward hooks for the FPN features)
  b    kdscope Trainer, train.cache=off (the teacher runs every step)
  c    kdscope Trainer, train.cache=memory (teacher logits, and FPN features for cwd, by example
       index)
  d    kdscope Trainer, method none, no teacher: the student alone, the floor for any KD

Images/s are over the epochs after the first (warm-up). Targets: b >= 0.97 a; c against d. The
cache's bytes per example are printed (``TeacherCache.estimate_bytes``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdscope.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from kdscope.data import collate, load_data
from kdscope.methods import create_method
from kdscope.models import create_model
from kdscope.train import Trainer
from kdscope.train.cache import TeacherCache

BATCH, LR, MOMENTUM, WEIGHT_DECAY = 32, 0.01, 0.9, 5e-4
SETUPS = {
    "segmentation": ("fcn_resnet20", "fcn_resnet8", "pixel_kd", {}),
    "detection": ("fcos_resnet20", "fcos_resnet8", "cwd", {"maps": "features"}),
}
LEVELS = ["detector.backbone.fpn.layer_blocks.0", "detector.backbone.fpn.layer_blocks.1"]


def _models(task: str, classes: int, with_teacher: bool = True):
    teacher, student = SETUPS[task][:2]
    torch.manual_seed(0)
    s = create_model(student, classes, 1)
    t = create_model(teacher, classes, 1).eval() if with_teacher else None
    return t, s


def _hooks(model, store: dict, key: str):
    def keep(i):
        def hook(module, inputs, output):
            store[key, i] = output

        return hook

    return [model.get_submodule(n).register_forward_hook(keep(i)) for i, n in enumerate(LEVELS)]


def _cwd(s, t, temperature: float = 4.0):
    b, c = s.shape[:2]
    log_s = F.log_softmax(s.flatten(2) / temperature, dim=2)
    log_t = F.log_softmax(t.flatten(2) / temperature, dim=2)
    return (log_t.exp() * (log_t - log_s)).sum() * temperature**2 / (b * c)


def run_hand_written(task: str, train, classes: int, epochs: int) -> float:
    teacher, student = _models(task, classes)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, collate_fn=collate)
    feats: dict = {}
    handles = (
        _hooks(teacher, feats, "t") + _hooks(student, feats, "s") if task == "detection" else []
    )
    student.train()
    rates = []
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for x, y, _ in loader:
            if task == "segmentation":
                with torch.no_grad():
                    t_logits = teacher(x)
                logits = student(x)
                kl = F.kl_div(
                    F.log_softmax(logits, 1), F.log_softmax(t_logits, 1), reduction="none",
                    log_target=True,
                ).sum(1).mean()  # fmt: skip
                loss = F.cross_entropy(logits, y, ignore_index=255) + 10.0 * kl
            else:
                with torch.no_grad():
                    teacher(x)
                loss = sum(student(x, y).values())
                cwd = sum(_cwd(feats["s", i], feats["t", i]) for i in range(len(LEVELS)))
                loss = loss + 3.0 * cwd / len(LEVELS)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(x)
        rates.append(seen / (time.perf_counter() - start))
    for h in handles:
        h.remove()
    return sum(rates[1:]) / len(rates[1:])


def run_kdscope(task: str, train, classes: int, epochs: int, cache: str, distill: bool) -> float:
    teacher, student = _models(task, classes, distill)
    _, _, method, params = SETUPS[task]
    trainer = Trainer(
        student,
        train,
        teacher=teacher,
        method=create_method(method, **params) if distill else "none",
        data=DataConfig(batch_size=BATCH),
        optim=OptimConfig(lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY),
        schedule=ScheduleConfig(name="constant"),
        train=TrainConfig(epochs=epochs, cache=cache, device="cpu", amp=False),
        progress=False,
    )
    history = trainer.fit().history
    return sum(r["images_per_s"] for r in history[1:]) / len(history[1:])


def cache_bytes_per_example(task: str, train, classes: int) -> int:
    teacher, _ = _models(task, classes)
    layers = LEVELS if task == "detection" else []
    x = collate([train[0], train[1]])[0]
    return TeacherCache.estimate_bytes(teacher, x, layers, 1, torch.float32)


def measure(config: str, task: str, train, classes: int, epochs: int) -> float:
    """Images/s of one configuration (module docstring)."""
    if config == "a":
        return run_hand_written(task, train, classes, epochs)
    cache, distill = {"b": ("off", True), "c": ("memory", True), "d": ("off", False)}[config]
    return run_kdscope(task, train, classes, epochs, cache, distill)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*SETUPS, "both"], default="both")
    parser.add_argument("--num-train", type=int, default=1024, help="training scenes generated")
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up (>= 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=list("abcd"), default=list("abcd"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up")
    torch.set_num_threads(args.threads)
    tasks = list(SETUPS) if args.task == "both" else [args.task]
    print("| task | config | images/s |\n|---|---|---|")
    for task in tasks:
        scale = [0.5, min(1.25, args.canvas / 28)]
        options = {"task": task, "canvas": args.canvas, "scale": scale}
        options |= {"num_train": args.num_train, "num_test": 16}
        data = load_data("fmnist-scenes", val_fraction=0.0, options=options)
        train, classes = data.train, data.num_classes
        rates = {k: measure(k, task, train, classes, args.epochs) for k in args.only}
        for k, v in rates.items():
            print(f"| {task} | {k} | {v:.1f} |")
        if "a" in rates and "b" in rates:
            print(f"| {task} | b / a | {rates['b'] / rates['a']:.3f} |")
        if "c" in rates and "d" in rates:
            print(f"| {task} | c / d | {rates['c'] / rates['d']:.3f} |")
        per_example = cache_bytes_per_example(task, train, classes)
        print(f"| {task} | cache bytes per example | {per_example} |")


if __name__ == "__main__":
    main()
