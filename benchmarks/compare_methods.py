"""Every classification method on one Fashion-MNIST pair: accuracy, KRS (FSS, AOA), time per epoch.

    nohup .venv/bin/python benchmarks/compare_methods.py > runs/compare/log.txt 2>&1 &
    .venv/bin/python benchmarks/compare_methods.py --table      # the Markdown table of what is done

One teacher (resnet20) is trained, then one student (resnet8) per method from it, all with the same
data, schedule and seed: 5,000 training examples, 5 epochs, SGD lr 0.05 with a cosine schedule,
batch 128, no augmentation, the teacher cache on (the default), each method's own defaults. Runs go
through :func:`kdscope.api.run` into ``--out/<name>`` (``config.yaml`` re-runs one) and are skipped
when their ``summary.json`` exists, so a killed job restarted with the same command resumes where it
stopped. Test accuracy is on the whole test split; KRS, FSS (CKA) and AOA against the teacher on a
stratified ``--eval-size`` subset of it (``eval.json``), with one KRS constant C for every row: the
one the baseline (method ``none``) calibrates on the validation split. Times: the Trainer's wall
seconds per epoch (median), and the process CPU minutes of the whole run (``timing.json``: training
plus test and teacher-cache passes), which other jobs on a shared machine disturb less.

Methods that need something else:
  dml, byot   no teacher (online peers, self-distillation); evaluated against the teacher anyway,
              like the ``none`` baseline, to show what they share with it without being taught.
  multi_teacher  the teacher and a second one trained with seed 1; evaluated against the first.
  lwf         the lifelong setting of Li & Hoiem: an old model (the teacher architecture) trained on
              classes 0-4 teaches a 10-class student that sees only images of classes 5-9. Besides
              the 10-way test accuracy, task-aware accuracies as in the paper: old task = argmax
              over logits 0-4 on test images of classes 0-4 (what only the teacher taught), new
              task = argmax over logits 5-9 on classes 5-9; KRS is against the old model on the
              old task.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from kdscope.api import run
from kdscope.config import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from kdscope.data import collate, load_data, stratified_sample
from kdscope.methods import METHODS, create_method, method_info
from kdscope.methods.schemes import ClassSubset
from kdscope.metrics import accuracy, evaluate
from kdscope.models import create_model, describe, set_info
from kdscope.train import RunDirectory, Trainer, load_model

OLD, NEW = range(0, 5), range(5, 10)  # lwf's tasks


def order(methods: list[str]) -> list[str]:
    """Baseline first (it fixes C), then kd, the rest, and those needing extra teachers last."""
    last = [m for m in ("multi_teacher", "lwf") if m in methods]
    rest = sorted(set(methods) - {"none", "kd", *last})
    return ["none", "kd", *rest, *last]


def config(
    args, name: str, model: str, method: str = "none", teacher: Path | None = None, seed: int = 0
) -> RunConfig:
    return RunConfig(
        name=name,
        out_dir=args.out,
        data=DataConfig(
            name="fashion-mnist",
            train_size=args.train_size,
            val_fraction=args.val_fraction,
            batch_size=args.batch,
        ),
        student=ModelConfig(name=model),
        teacher=ModelConfig(name=args.teacher, checkpoint=teacher) if teacher else None,
        method=MethodConfig(name=method),
        optim=OptimConfig(lr=args.lr),
        schedule=ScheduleConfig(name="cosine"),
        train=TrainConfig(epochs=args.epochs, seed=seed, threads=args.threads),
    )


def done(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists()


def train_config_run(cfg: RunConfig) -> None:
    if not done(cfg.run_dir):
        with cpu_clock(cfg.run_dir):
            run(cfg, resume=True, progress=False)


@contextlib.contextmanager
def cpu_clock(run_dir: Path):
    """Write the process CPU seconds of the block to ``run_dir/timing.json``: on a shared machine
    wall time measures the neighbours as much as the run."""
    start = time.process_time()
    yield
    (run_dir / "timing.json").write_text(json.dumps({"cpu_s": time.process_time() - start}))


def train_custom(
    args,
    name: str,
    student: nn.Module,
    splits: tuple[Dataset, Dataset, Dataset],
    teacher=None,
    method: str = "none",
) -> Path:
    """A run the config cannot express (class subsets, several teachers), with run()'s outputs."""
    run_dir = args.out / name
    if done(run_dir):
        return run_dir
    train, val, test = splits
    torch.manual_seed(0)
    trainer = Trainer(
        student,
        train,
        val,
        teacher=teacher,
        method=create_method(method),
        data=DataConfig(batch_size=args.batch),
        optim=OptimConfig(lr=args.lr),
        schedule=ScheduleConfig(name="cosine"),
        train=TrainConfig(epochs=args.epochs, threads=args.threads),
        run_dir=RunDirectory(
            run_dir, {"name": name, "method": method, "note": "benchmarks/compare_methods.py"}
        ),
        progress=False,
    )
    with cpu_clock(run_dir):
        fit = trainer.fit(resume=True)
    summary = {
        "test_acc": accuracy(load_model(run_dir, "best"), test, 512, "cpu"),
        "best_val_acc": fit.best_val_acc,
        "epochs": fit.epochs,
        "cache": fit.cache,
        "cache_fill_s": fit.cache_fill_s,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return run_dir


def subsets(data, classes: range) -> tuple[Dataset, Dataset, Dataset]:
    """The train, val and test examples of ``classes``."""
    return tuple(ClassSubset(split, classes) for split in (data.train, data.val, data.test))


class OldHead(nn.Module):
    """A 10-class student seen through its first ``classes`` logits (lwf's old task)."""

    def __init__(self, model: nn.Module, classes: int):
        super().__init__()
        self.model, self.classes = model, classes
        info = describe(model)
        set_info(self, replace(info, stages=tuple(f"model.{name}" for name in info.stages)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, : self.classes]


@torch.no_grad()
def task_accuracy(model: nn.Module, data: Dataset, classes: range) -> float:
    """Accuracy of argmax over ``classes``' logits on the examples of those classes."""
    model.eval()
    x, y, _ = collate([data[i] for i in range(len(data))])
    logits = torch.cat([model(chunk) for chunk in x.split(512)])[:, classes.start : classes.stop]
    return (logits.argmax(1) + classes.start == y).float().mean().item()


def krs_record(result) -> dict:
    k, a = result.krs["student"], result.agreement["student"]
    return {
        "krs": k.krs,
        "fss": k.fss,
        "aoa": k.aoa,
        "top1_agreement": a.all.top1_agreement,
        "c": result.calibration["c"],
    }


def evaluate_run(
    run_dir: Path, teacher: nn.Module, data, eval_set: Dataset, c: float | None, lwf: bool = False
):
    """Write ``eval.json``: accuracy on the test split, and KRS/FSS/AOA against ``teacher`` on
    ``eval_set`` (C given, or calibrated on the validation split)."""
    path = run_dir / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    student = load_model(run_dir, "best")
    record = {"test_acc": json.loads((run_dir / "summary.json").read_text())["test_acc"]}
    if lwf:
        old_test, old_val = ClassSubset(data.test, OLD), ClassSubset(data.val, OLD)
        record["old_task_acc"] = task_accuracy(student, old_test, OLD)
        record["new_task_acc"] = task_accuracy(student, ClassSubset(data.test, NEW), NEW)
        old_eval = ClassSubset(eval_set, OLD)
        result = evaluate(teacher, OldHead(student, len(OLD)), old_eval, calibration=old_val)
    else:
        options = {"c": c} if c is not None else {"calibration": data.val}
        result = evaluate(teacher, student, eval_set, **options)
    record |= krs_record(result)
    path.write_text(json.dumps(record, indent=2))
    return record


def run_all(args) -> None:
    torch.set_num_threads(args.threads)
    out = args.out
    data = load_data("fashion-mnist", val_fraction=args.val_fraction, train_size=args.train_size)
    eval_set = Subset(data.test, stratified_sample(data.test.labels, args.eval_size, seed=0))
    teacher_cfg = config(args, "teacher", args.teacher)
    log(f"teacher {args.teacher}")
    train_config_run(teacher_cfg)
    teacher = load_model(teacher_cfg.run_dir, "best")
    c = None
    for method in order(args.methods):
        start = time.perf_counter()
        run_dir = out / method
        try:
            if method == "lwf":
                old = train_custom(
                    args,
                    "teacher-old",
                    create_model(args.teacher, len(OLD), 1),
                    subsets(data, OLD),
                )
                old_teacher = load_model(old, "best")
                train_custom(
                    args,
                    method,
                    create_model(args.student, 10, 1),
                    (*subsets(data, NEW)[:2], data.test),
                    teacher=old_teacher,
                    method=method,
                )
                record = evaluate_run(run_dir, old_teacher, data, eval_set, None, lwf=True)
            elif method == "multi_teacher":
                second = config(args, "teacher-seed1", args.teacher, seed=1)
                train_config_run(second)
                teachers = [teacher, load_model(second.run_dir, "best")]
                train_custom(
                    args,
                    method,
                    create_model(args.student, 10, 1),
                    (data.train, data.val, data.test),
                    teacher=teachers,
                    method=method,
                )
                record = evaluate_run(run_dir, teacher, data, eval_set, c)
            else:
                needs_teacher = method_info(method)["teacher"]
                cfg = config(
                    args,
                    method,
                    args.student,
                    method,
                    teacher_cfg.run_dir if needs_teacher else None,
                )
                train_config_run(cfg)
                record = evaluate_run(run_dir, teacher, data, eval_set, c)
            if method == "none":
                c = record["c"]
            log(
                f"{method}: test acc {record['test_acc']:.4f}, KRS {record['krs']:.4f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
        except Exception as err:  # one method's failure must not stop the others
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "error.txt").write_text(traceback.format_exc())
            log(f"{method}: FAILED {type(err).__name__}: {err}")
    print(table(args), flush=True)


def times(run_dir: Path) -> str:
    """Median wall seconds per epoch (the Trainer's) | CPU minutes of the whole run."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    wall = statistics.median(json.loads(line)["epoch_time_s"] for line in lines)
    timing = run_dir / "timing.json"
    cpu = json.loads(timing.read_text())["cpu_s"] / 60 if timing.exists() else None
    return f"{wall:.1f} | {'-' if cpu is None else f'{cpu:.1f}'}"


def table(args) -> str:
    """Markdown table of every finished run (failed ones with their error)."""
    rows = [
        "| method | family | test acc | KRS | FSS (CKA) | AOA | top-1 agr. | s/epoch | CPU min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    teachers = {"teacher": "", "teacher-seed1": "", "teacher-old": ", classes 0-4"}
    for name, note in teachers.items():
        run_dir = args.out / name
        if done(run_dir):
            acc = json.loads((run_dir / "summary.json").read_text())["test_acc"]
            label = f"{name} ({args.teacher}{note})"
            rows.append(f"| {label} | | {acc:.4f} | | | | | {times(run_dir)} |")
    for method in order(args.methods):
        run_dir = args.out / method
        family = METHODS.get(method).family
        if (run_dir / "eval.json").exists():
            e = json.loads((run_dir / "eval.json").read_text())
            acc = f"{e['test_acc']:.4f}"
            if "old_task_acc" in e:
                acc += f" (old task {e['old_task_acc']:.4f}, new task {e['new_task_acc']:.4f})"
            rows.append(
                f"| {method} | {family} | {acc} | {e['krs']:.4f} | {e['fss']:.4f} "
                f"| {e['aoa']:.4f} | {e['top1_agreement']:.4f} | {times(run_dir)} |"
            )
        elif (run_dir / "error.txt").exists():
            last = (run_dir / "error.txt").read_text().strip().splitlines()[-1]
            rows.append(f"| {method} | {family} | failed: {last} | | | | | | |")
    return "\n".join(rows)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/compare"))
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--eval-size", type=int, default=2000, help="test examples for KRS")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=METHODS.names(), default=METHODS.names())
    parser.add_argument("--table", action="store_true", help="print the table of finished runs")
    args = parser.parse_args()
    args.methods = sorted(set(args.methods) | {"none"})
    if args.table:
        print(table(args))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
