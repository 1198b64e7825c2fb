"""The one training loop: teachers, baselines and every distillation method run through
``Trainer``, around the one :class:`~kdscope.train.step.DistillStep`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich import get_console
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope import distributed as ddp
from kdscope.config import DataConfig, OptimConfig, ScheduleConfig, TrainConfig
from kdscope.data import augment_batch, check_labels, collate, fetch, to_device
from kdscope.methods import Method, create_method
from kdscope.metrics import task_score
from kdscope.train.accounting import LossAccumulator, NonFiniteLossError, epoch_line, last_good
from kdscope.train.cache import TeacherCache, build_run_cache, cache_mode
from kdscope.train.interrupt import StopBetweenSteps
from kdscope.train.optim import build_optimizer, lr_factor, set_lr
from kdscope.train.paired import check_paired, check_paired_cache
from kdscope.train.probe import Probe, check_probe
from kdscope.train.progress import make_progress
from kdscope.train.run_dir import RunDirectory
from kdscope.train.sampler import EpochBatchSampler
from kdscope.train.scalar_log import check_scalar_log
from kdscope.train.seeding import derived_seed, seed_everything
from kdscope.train.state import LoopState
from kdscope.train.step import DistillStep
from kdscope.train.views import ViewBank

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
    best_epoch: int | None = None
    stopped_early: bool = False


class Trainer:
    """Train ``student`` on ``train_set`` with a distillation ``method`` (``"none"``: labels alone).

    Each step is a :class:`~kdscope.train.step.DistillStep`; the teacher is frozen in eval mode,
    and with a deterministic input pipeline its outputs are cached once (``train.cache``).
    ``augment`` is a batched augmentation applied on the device with a generator seeded by (run
    seed, epoch, step). ``data`` gives the batch sizes and loader workers; ``optim``, ``schedule``
    and ``train`` the rest of the recipe. With ``run_dir`` (a path or a
    :class:`~kdscope.train.run_dir.RunDirectory`), each epoch appends to ``metrics.jsonl`` and
    writes ``checkpoints/last.pt`` (and ``best.pt`` on a new best validation score: accuracy, mIoU
    or mAP, :func:`~kdscope.metrics.task_score`) atomically; Ctrl-C writes ``last.pt`` at the next
    step boundary; ``fit(resume=True)`` continues exactly. ``train.probe``: retention curves.

    ``teacher_view``: the (train, val) splits of another representation of the same examples,
    paired by index (cross-representation KD: a log-mel teacher, a waveform student). The teacher
    then only ever sees its view: its outputs are cached from it once and served to the
    student's batches by example index, so only output-only methods apply.
    """

    def __init__(
        self,
        student: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None = None,
        *,
        teacher: nn.Module | Sequence[nn.Module] | None = None,
        method: Method | str = "none",
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        data: DataConfig | None = None,
        optim: OptimConfig | None = None,
        schedule: ScheduleConfig | None = None,
        train: TrainConfig | None = None,
        run_dir: str | Path | RunDirectory | None = None,
        progress: bool = True,
        teacher_view: tuple[Dataset, Dataset | None] | None = None,
    ):
        self.cfg = train or TrainConfig()
        self.data_cfg = data or DataConfig()
        self.optim_cfg = optim or OptimConfig()
        self.schedule_cfg = schedule or ScheduleConfig()
        self.device = ddp.pick_device(self.cfg.device)
        method = create_method(method) if isinstance(method, str) else method
        self.step = DistillStep(
            student,
            teacher,
            method,
            device=self.device,
            ce_weight=self.cfg.ce_weight,
            label_smoothing=self.cfg.label_smoothing,
        )
        self.student, self.teacher, self.method = student, self.step.teacher, method
        self.train_set = train_set
        # An empty validation split selects nothing: the run then keeps its last epoch.
        self.val_set = val_set if val_set is not None and len(val_set) > 0 else None
        self.augment = augment
        if run_dir is not None and not isinstance(run_dir, RunDirectory):
            run_dir = RunDirectory(run_dir)
        self.run = run_dir
        self.show_progress = progress
        self.dist = ddp.DistInfo()
        self.cache: TeacherCache | None = None
        self.views: ViewBank | None = None
        self.probe: Probe | None = None
        self._stop_requested = False
        check_scalar_log(self.cfg.log, has_run_dir=self.run is not None)
        self.teacher_view = teacher_view
        if teacher_view is not None:
            check_paired(teacher_view, train_set, self.val_set, method)

    # ---- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.dist = ddp.init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.amp = self.cfg.amp and self.device.type == "cuda"
        self.step.device, self.step.amp = self.device, self.amp
        self.step.bind(fetch(self.train_set, [0, 1])[0], len(self.train_set))
        params = list(self.student.parameters()) + list(self.method.parameters())
        self.optimizer = build_optimizer(params, self.optim_cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.model = self.student
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        self.step.model = self.model

    def _build_cache(self, mode: str, progress) -> float:
        layers = self.method.teacher_layers if self.method.needs.teacher_features else []
        built = build_run_cache(
            mode,
            self.teacher,
            self.train_set if self.teacher_view is None else self.teacher_view[0],
            layers,
            self.cfg,
            augment=self.augment,
            batch_size=self.data_cfg.eval_batch_size,
            device=self.device,
            amp=self.amp,
            directory=self.run.cache_dir if self.run else None,
            progress=progress,
            log=self._log,
            method=self.method,
        )
        self.cache, self.views, self.cache_mode = built.cache, built.views, built.mode
        if self.cache is not None:
            self.step.cache = self.cache
            self.method.prefill(self.cache)
        return built.fill_s

    def _parts(self) -> dict[str, Any]:
        """What a checkpoint holds besides the LoopState."""
        return {
            "model": self.student,
            "method": self.method,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
        }

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> FitResult:
        """Train for ``train.epochs`` epochs (continuing from ``last.pt`` when ``resume``)."""
        with StopBetweenSteps(self):
            return self._fit(resume)

    def _fit(self, resume: bool) -> FitResult:
        seed_everything(self.cfg.seed, self.cfg.deterministic)
        self._setup()
        owns_lock = self.run is not None and self.dist.is_main and self.run.lock()
        try:
            return self._train(resume)
        finally:
            if owns_lock:
                self.run.unlock()

    def _train(self, resume: bool) -> FitResult:
        # Read (and check against this run's config) before any costly set-up.
        ckpt = self.run.read_last() if resume and self.run is not None else None
        if resume and ckpt is None:
            self._log("no checkpoint to resume from; starting fresh")
        if self.val_set is None:
            if self.cfg.early_stop:
                raise ValueError("train.early_stop needs a validation set (data.val_fraction > 0)")
            self._log("no validation set: the last epoch is the run's result (no best epoch)")
        one_teacher = self.teacher is not None and not self.step.ensemble
        check_probe(
            self.cfg.probe,
            one_teacher=one_teacher and self.method.same_label_space,
            has_val=self.val_set is not None,
        )
        self.cache_mode = cache_mode(
            self.cfg.cache,
            needed=self.teacher is not None and self.method.needs.teacher_outputs,
            augmented=self.augment is not None,
        )
        if self.teacher_view is not None:
            check_paired_cache(self.cache_mode)
        with make_progress(self.show_progress and self.dist.is_main) as progress:
            fill_s = self._build_cache(self.cache_mode, progress)
            if self.cfg.probe and self.dist.is_main:
                self.probe = Probe(
                    self.teacher,
                    self.student,
                    self.val_set,
                    self.cfg.probe,
                    self.cfg.seed,
                    device=self.device,
                    amp=self.amp,
                    teacher_set=self.teacher_view[1] if self.teacher_view is not None else None,
                )
            result = FitResult(None, None, self._teacher_val_acc(), self.cfg.epochs)
            result.cache, result.cache_fill_s = self.cache_mode, fill_s
            # Last of the set-up: a resume restores every RNG stream, which nothing above draws on.
            state = RunDirectory.resume(ckpt, self._parts()) if ckpt else LoopState()
            if ckpt:
                self._log(
                    f"resuming from {self.run.last}: epoch {state.epoch + 1}, step {state.step}"
                )
            if self.run is not None and self.dist.is_main:
                self.run.start(state, tensorboard=self.cfg.log == "tensorboard")
            with self.step.taps():
                try:
                    while state.epoch < self.cfg.epochs and not state.stopped:
                        self._epoch(state, progress, result.teacher_val_acc)
                except KeyboardInterrupt:
                    self._interrupted(state)
                    raise
                except NonFiniteLossError as err:
                    raise NonFiniteLossError(f"{err}; {last_good(self.run)}") from None
                finally:
                    if self.run is not None:
                        self.run.close_log()
        result.best_val_acc = state.best_val_acc
        result.final_val_acc = state.history[-1]["val_acc"] if state.history else None
        result.history = state.history
        result.epochs = state.epoch
        result.best_epoch, result.stopped_early = state.best_epoch, state.stopped
        return result

    def _epoch(self, state: LoopState, progress, teacher_val_acc: float | None) -> None:
        record = self._train_epoch(state, progress)
        record["val_acc"] = self._val_acc()
        record["teacher_val_acc"] = teacher_val_acc
        if self.probe is not None:
            record |= self.probe.score(self.student)
        improved = state.finish_epoch(record, self.cfg.early_stop_delta)
        state.stopped = state.plateaued(self.cfg.early_stop)
        if self.dist.is_main:
            self._log(epoch_line(record))
            if state.stopped:
                self._log(
                    f"stopped early: no better validation accuracy for {self.cfg.early_stop} "
                    f"epochs (best {state.best_val_acc:.4f} at epoch {state.best_epoch})"
                )
            if self.run is not None:
                self.run.epoch_end(state, self._parts(), improved)
        ddp.barrier(self.dist)  # other ranks may read the checkpoints next

    def _train_epoch(self, state: LoopState, progress) -> dict[str, Any]:
        epoch, start = state.epoch, state.step
        self.student.train()
        self.method.train()
        lr = set_lr(
            self.optimizer, self.optim_cfg.lr, lr_factor(epoch, self.cfg.epochs, self.schedule_cfg)
        )
        sampler = EpochBatchSampler(
            len(self.train_set),
            self.data_cfg.batch_size,
            shuffle=True,
            seed=self.cfg.seed,
            epoch=epoch,
            start=start,
            rank=self.dist.rank,
            world=self.dist.world,
        )
        loader = DataLoader(
            self.train_set,
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=self.data_cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # creating the iterator must not draw the global RNG
        )
        acc = LossAccumulator.from_state(state.accumulators)
        seen_before = acc.count
        epoch_views = self.views.epoch_views(epoch) if self.views is not None else None
        task = progress.add_task(
            f"epoch {epoch + 1}/{self.cfg.epochs}", total=len(sampler) + start, completed=start
        )
        t0 = time.perf_counter()
        try:
            for x, y, idx in loader:
                if self._stop_requested:
                    raise KeyboardInterrupt
                view = epoch_views[idx] if epoch_views is not None else None
                acc.add(self._train_step(x, y, idx, epoch, state.step, view), len(x))
                state.step += 1
                progress.advance(task)
                if state.step % CHECK_EVERY == 0:
                    acc.flush(epoch, state.step)
        except KeyboardInterrupt:
            acc.flush(epoch, state.step, check=False)
            state.accumulators = acc.state()
            raise
        acc.flush(epoch, state.step)
        # Until finish_epoch, an interrupt (during validation) must save the epoch's sums too.
        state.accumulators = acc.state()
        progress.remove_task(task)
        elapsed = time.perf_counter() - t0
        trained = acc.count - seen_before
        return {
            "epoch": epoch + 1,
            "lr": lr,
            **acc.means(),
            # This session's images only: a resumed epoch's restored count was timed before.
            "images_per_s": trained / elapsed * self.dist.world
            if trained and elapsed > 0
            else None,
            "epoch_time_s": elapsed,
        }

    def _train_step(self, x, y, idx, epoch: int, step: int, view) -> dict[str, Tensor]:
        check_labels(y, self.step.num_classes, "the training set", self.step.ignore_index)
        x = x.to(self.device, non_blocking=True)
        y = to_device(y, self.device)
        rows = None
        if view is not None:  # the view bank: this epoch's view of each example, cached
            x, rows = self.views.inputs(x, idx, view), self.views.entry(idx, view)
        elif self.augment is not None:
            gen = torch.Generator(self.device).manual_seed(derived_seed(self.cfg.seed, epoch, step))
            x, y = augment_batch(self.augment, x, y, gen)
        out = self.step(x, y, idx, epoch, step, rows)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        ddp.average_gradients(self.method, self.dist)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            correct, counted = self.step.student_reader.correct(out.logits, y)
        return {
            "loss": out.loss.detach(),
            self.step.student_reader.loss_name: out.ce.detach(),
            **{k: v.detach() for k, v in out.terms.items()},
            "correct": correct,
            "counted": torch.as_tensor(counted),
        }

    def _interrupted(self, state: LoopState) -> None:
        if self.dist.is_main and self.run is not None:
            path = self.run.interrupted(state, self._parts())
            self._log(
                f"interrupted at epoch {state.epoch + 1}, step {state.step}: saved {path}; "
                "resume with --resume"
            )

    # ---- evaluation and logs ------------------------------------------------------------------
    def _val_acc(self) -> float | None:
        if self.val_set is None or not self.dist.is_main:
            ddp.barrier(self.dist)
            return None
        acc = task_score(
            self.student, self.val_set, self.data_cfg.eval_batch_size, self.device, self.amp
        )
        ddp.barrier(self.dist)
        return acc

    def _teacher_val_acc(self) -> float | None:
        if self.teacher is None or self.val_set is None or not self.dist.is_main:
            return None
        if self.step.ensemble or not self.method.same_label_space:
            return None
        val_set = self.val_set if self.teacher_view is None else self.teacher_view[1]
        return task_score(
            self.teacher, val_set, self.data_cfg.eval_batch_size, self.device, self.amp
        )

    def _log(self, message: str) -> None:
        if self.dist.is_main and self.show_progress:
            get_console().print(message, soft_wrap=True)  # log lines stay whole in a file
