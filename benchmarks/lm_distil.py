"""Character-level LM distillation on Tiny Shakespeare: gpt-mini teacher, gpt-micro students.

    .venv/bin/python benchmarks/lm_distil.py --out runs/lm          # ~22 + 9 minutes on one thread
    .venv/bin/python benchmarks/lm_distil.py --out runs/lm --teacher-steps 20 --student-steps 20

The teacher trains ``--teacher-steps`` steps of 32 x 128 characters (AdamW 1e-3, 100 warm-up
steps, cosine to 1e-4, weight decay 0.1 on matrices, gradient norm clipped at 1) and is saved to
``--out/teacher.pt``, which later runs reuse. Then one student per objective, all from the same
seed and batches (AdamW 3e-3, 50 warm-up steps, cosine to 3e-4): ``ce`` (labels), ``kd``
(:func:`~kdscope.methods.token_losses.token_kd` against the live teacher) and ``topk`` (the same
loss from a top-8 float16 cache of the whole training split, built once). Each line reports training
seconds and the token measures of the validation split (:func:`~kdscope.metrics.tokens.
token_measures`). One seed: differences between students within a few hundredths are noise.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from kdscope.data import lm  # noqa: F401  (registers the LM datasets)
from kdscope.data.memory import collate
from kdscope.data.registry import load_data
from kdscope.methods.token_losses import token_kd
from kdscope.methods.topk import TopKTargets, topk_kd, topk_targets
from kdscope.metrics.tokens import token_measures
from kdscope.models import gpt  # noqa: F401  (registers the GPT presets)
from kdscope.models.registry import create_model

BATCH = 32


def cosine(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return floor + 0.5 * (peak - floor) * (
        1 + math.cos(math.pi * (step - warmup) / (total - warmup))
    )


def train(model, data, steps, loss_fn, *, peak, floor, warmup, decay) -> float:
    """AdamW with a cosine schedule; returns the wall seconds."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": decay}, {"params": others, "weight_decay": 0.0}],
        lr=peak,
        betas=(0.9, 0.99),
    )
    draw = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine(step, steps, peak, floor, warmup)
        x, y, index = data.train.__getitems__(
            torch.randint(len(data.train), (BATCH,), generator=draw)
        )
        loss = loss_fn(model(x), y, x, index)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lm"))
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--student-steps", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data("tinyshakespeare", block_size=128)
    val = DataLoader(data.val, batch_size=64, collate_fn=collate)
    ce = lambda logits, y, x, index: F.cross_entropy(logits.flatten(0, 1), y.flatten())  # noqa: E731

    torch.manual_seed(0)
    teacher = create_model("gpt-mini", data.num_classes, 1)
    path = args.out / "teacher.pt"
    if path.exists():
        teacher.load_state_dict(torch.load(path))
    else:
        seconds = train(
            teacher, data, args.teacher_steps, ce, peak=1e-3, floor=1e-4, warmup=100, decay=0.1
        )
        torch.save(teacher.state_dict(), path)
        print(f"teacher: {args.teacher_steps} steps in {seconds / 60:.1f} min", flush=True)
    teacher.eval()

    start = time.perf_counter()
    train_loader = DataLoader(data.train, batch_size=64, collate_fn=collate)
    with torch.no_grad():
        parts = [topk_targets(teacher(x), 8) for x, _, _ in train_loader]
    cache = TopKTargets(*(torch.cat(t) for t in list(zip(*parts, strict=True))[:3]), 1.0)
    megabytes = sum(t.numel() * t.element_size() for t in cache[:3]) / 1e6
    print(f"top-8 cache: {megabytes:.1f} MB in {time.perf_counter() - start:.0f} s", flush=True)

    objectives = {
        "ce": ce,
        "kd": lambda logits, y, x, index: token_kd(logits, _teacher_logits(teacher, x)),
        "topk": lambda logits, y, x, index: topk_kd(logits, cache.take(index)),
    }
    for name, loss_fn in objectives.items():
        torch.manual_seed(0)
        student = create_model("gpt-micro", data.num_classes, 1)
        seconds = train(
            student, data, args.student_steps, loss_fn, peak=3e-3, floor=3e-4, warmup=50, decay=0.0
        )
        r, cka = token_measures(teacher, student, val, k=5)
        print(
            f"{name}: {seconds:.0f} s; val nats/char student {math.log(r.student_perplexity):.4f} "
            f"teacher {math.log(r.teacher_perplexity):.4f}; agreement {r.top1_agreement:.4f} "
            f"(teacher-correct {r.agreement_teacher_correct:.4f}, same mistake "
            f"{r.same_mistake:.4f}); top-5 overlap {r.topk_overlap:.4f}; KL {r.kl:.4f}; "
            f"JS {r.js:.4f}; CKA " + ", ".join(f"{s}~{t} {v:.3f}" for (s, t), v in cka.items()),
            flush=True,
        )


@torch.no_grad()
def _teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return teacher(x)


if __name__ == "__main__":
    main()
