"""The one training loop: teachers, baselines and every distillation method run through
``Trainer``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope.config import OptimConfig, ScheduleConfig, TrainConfig
from kdscope.features import FeatureTap, layer_shapes
from kdscope.methods import BindContext, Method, Outputs, create_method
from kdscope.train import distributed as ddp
from kdscope.train.accounting import LossAccumulator, epoch_line
from kdscope.train.cache import TeacherCache, cache_mode
from kdscope.train.checkpoint import restore_training_state, save_training_state
from kdscope.train.ensemble import TeacherEnsemble, infer_classes
from kdscope.train.interrupt import StopBetweenSteps
from kdscope.train.optim import build_optimizer, lr_factor, set_lr
from kdscope.train.progress import make_progress
from kdscope.train.sampler import EpochBatchSampler
from kdscope.train.seeding import derived_seed, seed_everything
from kdscope.train.validate import accuracy

CHECK_EVERY = 50  # steps between non-finite checks: a sync point on GPU, so not every step


@dataclass
class FitResult:
    best_val_acc: float | None
    final_val_acc: float | None
    teacher_val_acc: float | None
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    cache: str = "off"
    cache_fill_s: float = 0.0


class Trainer:
    """Train ``student`` on ``train_set`` with a distillation ``method`` (``"none"``: labels alone).

    Loss per step: ``ce_weight * CE(student(x), y) + sum(method(outputs).values())``, where
    ``ce_weight`` is the run's ``train.ce_weight`` or the method's ``ce_weight_at(epoch)``. The
    teacher is frozen in eval mode under ``no_grad``; with a deterministic input pipeline its
    outputs are cached once (``train.cache``). With ``run_dir`` set, each epoch appends to
    ``metrics.jsonl`` and writes ``checkpoints/last.pt`` (and ``best.pt`` on a new best validation
    accuracy) atomically; Ctrl-C writes ``last.pt`` mid-epoch and ``fit(resume=True)`` continues
    exactly where the run stopped.
    """

    def __init__(
        self,
        student: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None = None,
        *,
        teacher: nn.Module | list[nn.Module] | None = None,
        method: Method | str = "none",
        num_classes: int | None = None,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        collate: Callable | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        optim: OptimConfig | None = None,
        schedule: ScheduleConfig | None = None,
        train: TrainConfig | None = None,
        run_dir: str | Path | None = None,
        config: dict[str, Any] | None = None,
        progress: bool = True,
    ):
        from kdscope.data import collate as default_collate

        self.method = create_method(method) if isinstance(method, str) else method
        if self.method.needs.teacher and not teacher:
            raise ValueError(f"method {type(self.method).__name__} needs a teacher; none was given")
        self.num_teachers = (
            len(teacher) if isinstance(teacher, (list, tuple)) else int(bool(teacher))
        )
        if self.num_teachers > 1:
            if self.method.needs.teacher_features:
                raise ValueError("feature-based methods take one teacher; got several")
            teacher = TeacherEnsemble(list(teacher))
        self.student, self.teacher = student, teacher
        self.train_set, self.val_set = train_set, val_set
        self.num_classes = num_classes or infer_classes(student)
        if (
            teacher is not None
            and self.method.same_label_space
            and infer_classes(teacher) not in (None, self.num_classes)
        ):
            raise ValueError(
                f"teacher predicts {infer_classes(teacher)} classes but the student predicts "
                f"{self.num_classes}: they must share the label space"
            )
        self.augment = augment
        self.collate = collate or default_collate
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.optim_cfg = optim or OptimConfig()
        self.schedule_cfg = schedule or ScheduleConfig()
        self.cfg = train or TrainConfig()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.config = config or {}
        self.show_progress = progress
        self.device = _pick_device(self.cfg.device)
        self.dist = ddp.DistInfo()
        self.cache: TeacherCache | None = None
        self._stop_requested = False

    # ---- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.dist = ddp.init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp = self.cfg.amp and self.device.type == "cuda"
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device).eval().requires_grad_(False)
        self.method.resolve_layers(self.student, self.teacher)
        self._bind_method()
        self.method.to(self.device)
        params = list(self.student.parameters()) + list(self.method.parameters())
        self.optimizer = build_optimizer(params, self.optim_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.model = self.student
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)

    def _bind_method(self) -> None:
        x = self.collate([self.train_set[0], self.train_set[1]])[0].to(self.device)
        s_shapes = layer_shapes(self.student, self.method.student_layers, x)
        t_shapes = layer_shapes(self.teacher, self.method.teacher_layers, x)
        self.method.bind(
            BindContext(
                student=self.student,
                teacher=self.teacher,
                num_classes=self.num_classes,
                num_train=len(self.train_set),
                student_shapes=s_shapes,
                teacher_shapes=t_shapes,
            )
        )

    def _build_cache(self, mode: str, progress) -> float:
        if mode == "off":
            return 0.0
        layers = self.method.teacher_layers if self.method.needs.teacher_features else []
        dtype = torch.float16 if self.cfg.cache_dtype == "float16" else torch.float32
        x = self.collate([self.train_set[0]])[0].to(self.device)
        size = TeacherCache.estimate_bytes(self.teacher, x, layers, len(self.train_set), dtype)
        if size > self.cfg.cache_max_gb * 2**30:
            if self.cfg.cache == "auto":
                self._log(
                    f"teacher cache off: it would take {size / 2**30:.1f} GiB "
                    f"> train.cache_max_gb={self.cfg.cache_max_gb}"
                )
                self.cache_mode = "off"
                return 0.0
            raise ValueError(
                f"the teacher cache would take {size / 2**30:.1f} GiB, over "
                f"train.cache_max_gb={self.cfg.cache_max_gb}; raise it, use float16 or cache=off"
            )
        start = time.perf_counter()
        self.cache = TeacherCache.build(
            self.teacher,
            self.train_set,
            layers,
            collate=self.collate,
            batch_size=self.eval_batch_size,
            device=self.device,
            dtype=dtype,
            where=mode,
            directory=self.run_dir / "cache" if self.run_dir else None,
            autocast=self.amp,
            progress=progress,
        )
        return time.perf_counter() - start

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> FitResult:
        """Train for ``train.epochs`` epochs (continuing from ``last.pt`` when ``resume``)."""
        with StopBetweenSteps(self):
            return self._fit(resume)

    def _fit(self, resume: bool) -> FitResult:
        seed_everything(self.cfg.seed, self.cfg.deterministic)
        self._setup()
        state = self._resume_state() if resume else None
        start_epoch, start_step, best, acc_state = 0, 0, None, None
        history: list[dict[str, Any]] = []
        if state is not None:
            start_epoch, start_step = state["epoch"], state["step"]
            best, acc_state, history = (
                state["best_val_acc"],
                state.get("accumulators"),
                state["history"],
            )
        self._rewrite_metrics(history)
        self.cache_mode = cache_mode(
            self.cfg.cache,
            needed=self.teacher is not None and self.method.needs.teacher_outputs,
            augmented=self.augment is not None,
        )
        result = FitResult(None, None, None, self.cfg.epochs, history, self.cache_mode)
        with make_progress(self.show_progress and self.dist.is_main) as progress:
            result.cache_fill_s = self._build_cache(self.cache_mode, progress)
            if self.cache is not None:
                self.method.prefill(self.cache)
            result.cache = self.cache_mode
            result.teacher_val_acc = self._teacher_val_acc()
            s_tap = self._tap(
                self.student, self.method.student_layers, self.method.needs.student_features
            )
            t_tap = self._tap(
                self.teacher,
                self.method.teacher_layers,
                self.method.needs.teacher_features,
                detach=True,
            )
            with s_tap, t_tap:
                for epoch in range(start_epoch, self.cfg.epochs):
                    record = self._train_epoch(
                        epoch, start_step, acc_state, s_tap, t_tap, progress, best, history
                    )
                    start_step, acc_state = 0, None
                    record["val_acc"] = self._val_acc()
                    record["teacher_val_acc"] = result.teacher_val_acc
                    improved = record["val_acc"] is not None and (
                        best is None or record["val_acc"] > best
                    )
                    if improved:
                        best = record["val_acc"]
                    history.append(record)
                    self._end_epoch(epoch, record, best, history, improved)
        result.best_val_acc = best
        result.final_val_acc = history[-1]["val_acc"] if history else None
        result.history = history
        return result

    def _train_epoch(self, epoch, start_step, acc_state, s_tap, t_tap, progress, best, history):
        self.student.train()
        self.method.train()
        lr = set_lr(
            self.optimizer, self.optim_cfg.lr, lr_factor(epoch, self.cfg.epochs, self.schedule_cfg)
        )
        sampler = EpochBatchSampler(
            len(self.train_set),
            self.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            epoch=epoch,
            start=start_step,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        loader = DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        acc = LossAccumulator.from_state(acc_state)
        task = progress.add_task(
            f"epoch {epoch + 1}/{self.cfg.epochs}",
            total=len(sampler) + start_step,
            completed=start_step,
        )
        step = start_step
        t0 = time.perf_counter()
        try:
            for x, y, idx in loader:
                if self._stop_requested:
                    raise KeyboardInterrupt
                acc.add(self._step(x, y, idx, epoch, step, s_tap, t_tap), y.numel())
                step += 1
                progress.advance(task)
                if step % CHECK_EVERY == 0:
                    acc.flush(epoch, step)
        except KeyboardInterrupt:
            acc.flush(epoch, step, check=False)
            if self.dist.is_main and self.run_dir is not None:
                self._save("last.pt", epoch, step, best, history, acc.state())
                self._log(
                    f"interrupted at epoch {epoch + 1}, step {step}: saved "
                    f"{self.run_dir / 'checkpoints' / 'last.pt'}; resume with --resume"
                )
            raise
        acc.flush(epoch, step)
        progress.remove_task(task)
        elapsed = time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            **acc.means(),
            "images_per_s": acc.count / elapsed * self.dist.world if elapsed > 0 else None,
            "epoch_time_s": elapsed,
        }
        return record

    def _step(self, x, y, idx, epoch, step, s_tap, t_tap) -> dict[str, Tensor]:
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.augment is not None:
            gen = torch.Generator(self.device).manual_seed(derived_seed(self.cfg.seed, epoch, step))
            x = self.augment(x, gen)
        needs = self.method.needs
        with torch.autocast(self.device.type, enabled=self.amp):
            # Teacher first: its activations are freed before the student's graph is built. The
            # other order cost 25% more CPU time per step (resnet56 -> resnet8, batch 128) in
            # page faults, as glibc malloc then maps and unmaps the teacher's buffers every step.
            t_logits, t_feats = self._teacher_outputs(x, idx, t_tap)
            logits = self.model(x)
            out = Outputs(
                student_logits=logits,
                labels=y,
                teacher_logits=t_logits,
                student_features=s_tap.ordered() if needs.student_features else [],
                teacher_features=t_feats,
                indices=idx.to(self.device) if needs.indices else None,
                inputs=x,
                epoch=epoch,
                step=step,
            )
            terms = self.method(out)
            ce_weight = self.method.ce_weight_at(epoch)
            if self.cfg.ce_weight is not None and ce_weight != 0:
                ce_weight = self.cfg.ce_weight  # a run's CE weight never re-enables a hint stage
            ce = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
            loss = ce_weight * ce + sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        ddp.average_gradients(self.method, self.dist)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            correct = (logits.argmax(1) == y).sum()
        return {
            "loss": loss.detach(),
            "ce": ce.detach(),
            **{k: v.detach() for k, v in terms.items()},
            "correct": correct,
        }

    def _teacher_outputs(self, x, idx, t_tap) -> tuple[Tensor | None, list[Tensor]]:
        needs = self.method.needs
        if not needs.teacher_outputs:
            return None, []
        if self.cache is not None:
            logits, feats = self.cache.lookup(idx, self.device)
        else:
            with torch.no_grad():
                logits = self.teacher(x)
            feats = t_tap.ordered() if needs.teacher_features else []
        if self.num_teachers > 1:
            logits = logits.transpose(0, 1)  # the ensemble is cached per example: (B, K, C)
        return logits, feats

    # ---- evaluation, checkpoints, logs --------------------------------------------------------
    def _val_acc(self) -> float | None:
        if self.val_set is None or not self.dist.is_main:
            ddp.barrier(self.dist)
            return None
        acc = accuracy(
            self.student, self.val_set, self.eval_batch_size, self.device, self.collate, self.amp
        )
        ddp.barrier(self.dist)
        return acc

    def _teacher_val_acc(self) -> float | None:
        if self.teacher is None or self.val_set is None or not self.dist.is_main:
            return None
        if self.num_teachers > 1 or not self.method.same_label_space:
            return None
        return accuracy(
            self.teacher, self.val_set, self.eval_batch_size, self.device, self.collate, self.amp
        )

    def _end_epoch(self, epoch, record, best, history, improved) -> None:
        if self.dist.is_main:
            self._log(epoch_line(record))
        if self.dist.is_main and self.run_dir is not None:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            self._save("last.pt", epoch + 1, 0, best, history, None)
            if improved:
                self._save("best.pt", epoch + 1, 0, best, history, None)
        ddp.barrier(self.dist)  # other ranks may read the checkpoints next

    def _save(self, name, epoch, step, best, history, accumulators) -> None:
        save_training_state(
            self.run_dir / "checkpoints" / name,
            self._trained(),
            epoch=epoch,
            step=step,
            best_val_acc=best,
            history=history,
            accumulators=accumulators,
            config=self.config,
        )

    def _resume_state(self) -> dict[str, Any] | None:
        path = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
        if path is None or not path.exists():
            self._log("no checkpoint to resume from; starting fresh")
            return None
        ckpt = restore_training_state(path, self._trained())
        self._log(f"resuming from {path}: epoch {ckpt['epoch'] + 1}, step {ckpt['step']}")
        return ckpt

    def _trained(self) -> dict[str, Any]:
        return {
            "model": self.student,
            "method": self.method,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
        }

    def _rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """metrics.jsonl as the checkpoint knows it: a kill between the log line and the checkpoint
        (or a fresh start in an old directory) must not leave duplicate or orphan epochs."""
        if self.dist.is_main and self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = "".join(json.dumps(r) + "\n" for r in history)
            (self.run_dir / "metrics.jsonl").write_text(text)

    def _tap(self, model, layers, wanted, detach=False):
        if model is None or not wanted or not layers:
            return _NullTap()
        return FeatureTap(model, layers, detach=detach)

    def _log(self, message: str) -> None:
        if self.dist.is_main and self.show_progress:
            from rich import get_console

            get_console().print(message, soft_wrap=True)  # log lines stay whole in a file


class _NullTap:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def ordered(self) -> list[Tensor]:
        return []


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
