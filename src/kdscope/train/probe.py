"""Retention curves: a fixed probe set of validation examples scored against the teacher after every
epoch, inside the one training loop (``train.probe=N``).

The probe is N validation examples drawn stratified by label and seeded by the run seed
(:func:`~kdscope.data.stratified_sample`), so a resumed run, and every arm of one seed, score the
same examples. The teacher's probe logits and its centred Gram matrices at its stages are computed
once; each epoch one eval-mode forward of the student over the probe gives

- ``probe_agree_all``, ``probe_agree_C``, ``probe_agree_I``: top-1 agreement with the teacher on all
  probe examples, on those the teacher classifies correctly (C) and on those it gets wrong (I),
  the split of Mason-Williams et al. (2025, "Rethinking Knowledge Distillation"); None on an empty
  split;
- ``probe_aoa``: the output agreement of KRS (Alba & Villaverde 2025), mean clip(1 - KL(p_T || p_S)
  / C, 0, 1). Deviation: C is set by the teacher alone, the largest KL(p_T || uniform) over the
  probe (what a student that knows nothing scores), so that every epoch and every student of one
  teacher share it; the evaluation's AOA calibrates C on a held-out split instead;
- ``probe_cka/<student layer>``: minibatch debiased linear CKA (Nguyen et al. 2021) between that
  student stage and the teacher stage :func:`~kdscope.features.pair_layers` pairs it with, over
  fixed chunks of the probe (None while the student's features are constant).

The forward draws no random number and changes no state (eval mode, no gradient), so a run trains
exactly the same with and without a probe.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import collate, fetch, stratified_sample
from kdscope.features import FeatureTap, pair_layers
from kdscope.metrics import AgreementAccumulator, OutputAgreement, ZeroVarianceError
from kdscope.metrics.matrices import as_features
from kdscope.metrics.similarity import MinibatchCKA, linear_gram
from kdscope.models import describe, example_features, reader
from kdscope.train.seeding import derived_seed

# Fixed, not data.eval_batch_size (which a resume may change): minibatch CKA depends on the chunks.
PROBE_CHUNK = 256
MIN_PROBE = 4  # HSIC_1, so minibatch CKA, needs 4 examples per chunk
_PROBE_STREAM = 16  # the probe's own random stream from the run seed


@dataclass
class _Chunk:
    x: Tensor  # inputs, kept where the dataset gave them
    y: Tensor  # labels, on the device
    teacher_logits: Tensor
    teacher_grams: dict[str, Tensor] = field(default_factory=dict)


def check_probe(size: int, *, one_teacher: bool, has_val: bool) -> None:
    """Refuse ``train.probe=size`` (0: off) for a run without one teacher sharing the student's
    classes, or without a validation set, before any costly set-up."""
    if size and not one_teacher:
        raise ValueError(
            f"train.probe={size} scores agreement with one teacher that shares the student's "
            "classes; this run has none (set train.probe=0)"
        )
    if size and not has_val:
        raise ValueError(
            f"train.probe={size} draws from the validation set; this run has none "
            "(data.val_fraction > 0, or train.probe=0)"
        )


def probe_indices(val_set: Dataset, size: int, seed: int) -> np.ndarray:
    """The ``size`` validation indices the probe scores: stratified by label, seeded by ``seed``."""
    labels = _labels(val_set)
    if not MIN_PROBE <= size <= len(labels):
        raise ValueError(
            f"train.probe={size} must be between {MIN_PROBE} and {len(labels)} (the validation "
            "set's size), or 0 for no probe"
        )
    return stratified_sample(labels, size, derived_seed(seed, _PROBE_STREAM))


def _labels(dataset: Dataset) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is not None and len(labels) == len(dataset):
        return np.asarray(labels)
    loader = DataLoader(dataset, 512, collate_fn=collate, generator=torch.Generator())
    return np.concatenate([np.asarray(batch[1]) for batch in loader])


class Probe:
    """The probe of one run: ``teacher``'s outputs on ``size`` examples of ``val_set``, cached.

    Args:
        teacher: one frozen classifier sharing the student's label space.
        student: the model trained (its stages are paired with the teacher's once, here).
        val_set: the validation split the probe is drawn from.
        size: N, the probe's size (``train.probe``). ``seed``: the run seed.
        device, amp: where and how the forwards run.
        teacher_set: the teacher's view of ``val_set`` (the same examples in the same order, in
            another representation: cross-representation KD); default ``val_set``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        val_set: Dataset,
        size: int,
        seed: int,
        *,
        device: torch.device,
        amp: bool = False,
        teacher_set: Dataset | None = None,
    ):
        for who, model in (("teacher", teacher), ("student", student)):
            if describe(model).output != "classes":
                raise ValueError(
                    f"train.probe scores classifiers; the {who} {type(model).__name__} outputs "
                    f"{describe(model).output!r}"
                )
        self.device, self.amp = device, amp
        self.indices = probe_indices(val_set, size, seed)
        s_stages, t_stages = describe(student).stages, describe(teacher).stages
        self.pairs = pair_layers(s_stages, t_stages) if s_stages and t_stages else []
        self.chunks = self._teacher_chunks(teacher, val_set, teacher_set)
        # The largest KL(p_T || uniform) = log K - H(p_T) over the probe.
        logits = torch.cat([c.teacher_logits for c in self.chunks]).double()
        log_p = logits.log_softmax(1)
        kl_uniform = math.log(logits.shape[1]) + (log_p.exp() * log_p).sum(1)
        self.c = max(kl_uniform.max().item(), 0.0)

    def _teacher_chunks(
        self, teacher: nn.Module, val_set: Dataset, teacher_set: Dataset | None
    ) -> list[_Chunk]:
        n = len(self.indices)
        parts = np.array_split(self.indices, math.ceil(n / PROBE_CHUNK))
        t_layers = list(dict.fromkeys(t for _, t in self.pairs))
        chunks = []
        with torch.no_grad(), FeatureTap(teacher, t_layers, detach=True) as tap:
            for part in parts:
                x, y = fetch(val_set, part.tolist())[:2]
                t_x = fetch(teacher_set, part.tolist())[0] if teacher_set is not None else x
                logits = self._forward(teacher, t_x)
                grams = {t: linear_gram(self._features(teacher, t_x, tap[t], t)) for t in t_layers}
                chunks.append(_Chunk(x, torch.as_tensor(y).to(self.device), logits, grams))
        return chunks

    def _forward(self, model: nn.Module, x: Tensor) -> Tensor:
        with torch.autocast(self.device.type, enabled=self.amp):
            return reader(model).logits(model, x.to(self.device, non_blocking=True)).float()

    def _features(self, model: nn.Module, x: Tensor, features: Tensor, layer: str) -> Tensor:
        """A layer's features per example (a sequence classifier's are masked means over real
        tokens, :func:`~kdscope.models.example_features`), as CKA's (B, D) rows."""
        per_example = example_features(model, x.to(features.device), features)
        return as_features(per_example, layer, float64=False)

    @torch.no_grad()
    def score(self, student: nn.Module) -> dict[str, float | None]:
        """The probe's figures for ``student`` as it is now (its mode is restored), and the time
        they took (``probe_time_s``)."""
        t0 = time.perf_counter()
        was_training = student.training
        student.eval()
        agree, aoa = AgreementAccumulator(), OutputAgreement(self.c)
        cka = {s: MinibatchCKA(f"probe: student {s} / teacher {t}") for s, t in self.pairs}
        try:
            with FeatureTap(student, list(cka), detach=True) as tap:
                for chunk in self.chunks:
                    logits = self._forward(student, chunk.x)
                    agree.update(chunk.teacher_logits, logits, chunk.y)
                    aoa.update(chunk.teacher_logits, logits)
                    for s, t in self.pairs:
                        k = linear_gram(self._features(student, chunk.x, tap[s], s))
                        cka[s].update_grams(k, chunk.teacher_grams[t])
        finally:
            student.train(was_training)
        figures = agree.compute()
        record: dict[str, float | None] = {
            "probe_agree_all": figures.all.top1_agreement,
            "probe_agree_C": figures.teacher_correct.top1_agreement,
            "probe_agree_I": figures.teacher_incorrect.top1_agreement,
            "probe_aoa": aoa.compute(),
        }
        for s, acc in cka.items():
            record[f"probe_cka/{s}"] = _cka(acc)
        record["probe_time_s"] = time.perf_counter() - t0
        return record


def _cka(acc: MinibatchCKA) -> float | None:
    try:
        return acc.compute()
    except ZeroVarianceError:  # dead features (an untrained student's ReLUs): no value this epoch
        return None
