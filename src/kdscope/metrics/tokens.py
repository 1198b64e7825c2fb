"""Token-level transfer measures: how much of a teacher LM's next-token behaviour a student took.

Every predicted position of an evaluation split is one example: (B, T, V) logits and (B, T) next
tokens. :class:`TokenAgreement` streams top-1 agreement (on all positions, and on those where the
teacher's top-1 is the true next token or not, where agreement means the student repeats the
teacher's mistake), top-k overlap, KL(p_T || p_S) and JS (natural log), each model's perplexity,
agreement by position in the block and by teacher confidence, and the KRS output-agreement term
with positions as examples. :class:`TokenCKA` streams linear CKA between block outputs with
positions as examples. Probabilities are at temperature 1 and computed in float64: a batch takes
about 8 * B * T * V bytes per intermediate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from kdscope.features import FeatureTap, pair_layers
from kdscope.metrics.retention import OutputAgreement, calibration_constant
from kdscope.metrics.similarity import MinibatchCKA
from kdscope.models.info import describe

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn
    from matplotlib.figure import Figure

_SUMS = (
    "agree",
    "teacher_correct",
    "student_correct",
    "agree_teacher_correct",
    "agree_teacher_incorrect",
    "topk_overlap",
    "kl",
    "js",
    "teacher_nll",
    "student_nll",
)


def _check(teacher_logits: Tensor, student_logits: Tensor, targets: Tensor) -> None:
    if teacher_logits.dim() != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(
            "teacher and student logits must both be (B, T, vocab), got "
            f"{tuple(teacher_logits.shape)} and {tuple(student_logits.shape)}"
        )
    if targets.shape != teacher_logits.shape[:2]:
        raise ValueError(
            f"targets must be (B, T) = {tuple(teacher_logits.shape[:2])}, got "
            f"{tuple(targets.shape)}"
        )
    v = teacher_logits.shape[-1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= v):
        raise ValueError(f"targets must lie in [0, {v}), got {targets.min()}..{targets.max()}")
    for name, t in (("teacher logits", teacher_logits), ("student logits", student_logits)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contain NaN or inf values")


def position_calibration_constant(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """KRS's C for token outputs: the largest per-position KL(p_T || p_S) on a calibration split
    ((B, T, V) logits; :func:`~kdscope.metrics.retention.calibration_constant` over positions)."""
    v = teacher_logits.shape[-1]
    return calibration_constant(teacher_logits.reshape(-1, v), student_logits.reshape(-1, v))


@dataclass
class TokenAgreementResult:
    """Token-level figures over ``n`` positions (None where a split is empty).

    ``same_mistake`` is the share of teacher-incorrect positions where the student's top-1 is the
    teacher's wrong token. ``by_position[t]`` is the agreement at position t of the block;
    ``by_confidence[b]`` the agreement where the teacher's top-1 probability lies in
    ``(edges[b], edges[b + 1]]`` (the first bin includes 0), with ``confidence_counts`` positions.
    ``aoa`` is KRS's output agreement, mean clip(1 - KL / C, 0, 1), with ``c`` as given or, unset,
    the largest KL seen (see :class:`~kdscope.metrics.retention.OutputAgreement`).
    """

    n: int
    top1_agreement: float
    teacher_accuracy: float
    student_accuracy: float
    n_teacher_correct: int
    agreement_teacher_correct: float | None
    n_teacher_incorrect: int
    same_mistake: float | None
    k: int
    topk_overlap: float
    kl: float
    js: float
    teacher_perplexity: float
    student_perplexity: float
    aoa: float
    c: float | None
    by_position: list[float]
    confidence_edges: list[float]
    by_confidence: list[float | None]
    confidence_counts: list[int]

    def to_dict(self) -> dict:
        return asdict(self)


class TokenAgreement:
    """Streaming token-level agreement: ``update(teacher_logits, student_logits, targets)`` per
    batch of (B, T, V) logits and (B, T) next tokens, then ``compute()``.

    ``k`` is the top-k overlap's k (|top-k_S & top-k_T| / k); ``n_bins`` equal-width bins of the
    teacher's confidence; ``c`` KRS's calibration constant (from
    :func:`position_calibration_constant` on a calibration split), None to use the largest KL
    seen here. Memory O(T + n_bins).
    """

    def __init__(self, k: int = 5, n_bins: int = 10, c: float | None = None):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
        self.k, self.n_bins = k, n_bins
        self.aoa = OutputAgreement(c)
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64)
        self._n = 0
        self._position = torch.zeros(2, 0, dtype=torch.float64)  # (count, agree) per position
        self._confidence = torch.zeros(2, n_bins, dtype=torch.float64)

    @torch.no_grad()
    def update(self, teacher_logits: Tensor, student_logits: Tensor, targets: Tensor) -> None:
        teacher_logits, student_logits = teacher_logits.detach(), student_logits.detach()
        targets = targets.detach().to(teacher_logits.device).long()
        _check(teacher_logits, student_logits, targets)
        b, t, v = teacher_logits.shape
        if self.k > v:
            raise ValueError(f"k ({self.k}) exceeds the vocabulary size ({v})")
        log_t = F.log_softmax(teacher_logits.double(), dim=-1)
        log_s = F.log_softmax(student_logits.double(), dim=-1)
        p_t, p_s = log_t.exp(), log_s.exp()
        log_m = torch.logaddexp(log_t, log_s) - math.log(2.0)
        conf, pred_t = p_t.max(-1)
        pred_s = log_s.argmax(-1)
        agree = pred_t == pred_s
        t_correct, s_correct = pred_t == targets, pred_s == targets
        top_t = log_t.topk(self.k, dim=-1).indices
        top_s = log_s.topk(self.k, dim=-1).indices
        overlap = (top_s.unsqueeze(-1) == top_t.unsqueeze(-2)).any(-1).sum(-1) / self.k
        per_position = torch.stack(
            [
                agree.double(),
                t_correct.double(),
                s_correct.double(),
                (agree & t_correct).double(),
                (agree & ~t_correct).double(),
                overlap.double(),
                (p_t * (log_t - log_s)).sum(-1),
                0.5 * (p_t * (log_t - log_m)).sum(-1) + 0.5 * (p_s * (log_s - log_m)).sum(-1),
                -log_t.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
                -log_s.gather(-1, targets.unsqueeze(-1)).squeeze(-1),
            ]
        )  # (sums, B, T)
        self._sums += per_position.sum((1, 2)).cpu()
        self._n += b * t
        if t > self._position.shape[1]:
            self._position = F.pad(self._position, (0, t - self._position.shape[1]))
        self._position[0, :t] += b
        self._position[1, :t] += agree.double().sum(0).cpu()
        index = ((conf * self.n_bins).ceil().long() - 1).clamp(0, self.n_bins - 1)
        counts = torch.bincount(index.reshape(-1), minlength=self.n_bins)
        agreed = torch.bincount(index.reshape(-1), agree.reshape(-1).double(), self.n_bins)
        self._confidence += torch.stack([counts.double(), agreed]).cpu()
        self.aoa.update(teacher_logits.reshape(-1, v), student_logits.reshape(-1, v))

    def compute(self) -> TokenAgreementResult:
        if self._n == 0:
            raise ValueError("token agreement needs at least one position; none was seen")
        n = self._n
        s = dict(zip(_SUMS, self._sums.tolist(), strict=True))
        n_tc = round(s["teacher_correct"])
        n_ti = n - n_tc
        count, agreed = self._confidence.tolist()
        positions = self._position
        return TokenAgreementResult(
            n=n,
            top1_agreement=s["agree"] / n,
            teacher_accuracy=s["teacher_correct"] / n,
            student_accuracy=s["student_correct"] / n,
            n_teacher_correct=n_tc,
            agreement_teacher_correct=s["agree_teacher_correct"] / n_tc if n_tc else None,
            n_teacher_incorrect=n_ti,
            same_mistake=s["agree_teacher_incorrect"] / n_ti if n_ti else None,
            k=self.k,
            topk_overlap=s["topk_overlap"] / n,
            kl=s["kl"] / n,
            js=s["js"] / n,
            teacher_perplexity=math.exp(s["teacher_nll"] / n),
            student_perplexity=math.exp(s["student_nll"] / n),
            aoa=self.aoa.compute(),
            c=self.aoa.c,
            by_position=(positions[1] / positions[0]).tolist(),
            confidence_edges=np.linspace(0.0, 1.0, self.n_bins + 1).tolist(),
            by_confidence=[a / c if c else None for c, a in zip(count, agreed, strict=True)],
            confidence_counts=[round(c) for c in count],
        )


class TokenCKA:
    """Linear CKA between paired block outputs (B, T, d) with positions as examples, streamed.

    Each batch contributes ``positions`` positions drawn without replacement from its B * T by a
    generator seeded with ``seed`` (the same positions for both models, the same draws on every
    run), fed to :class:`~kdscope.metrics.similarity.MinibatchCKA` (Nguyen et al. 2021's debiased
    minibatch CKA), so memory is O(positions^2) whatever the split's size. Positions of one block
    are not independent examples; CKA here measures shared structure over positions, not
    sequences.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], positions: int = 256, seed: int = 0):
        if not pairs:
            raise ValueError("TokenCKA needs at least one (student layer, teacher layer) pair")
        if not isinstance(positions, int) or positions < 4:
            raise ValueError(f"positions must be an int >= 4 (debiased CKA), got {positions!r}")
        self.pairs = [tuple(p) for p in pairs]
        self.positions = positions
        self._generator = torch.Generator().manual_seed(seed)
        self._cka = {p: MinibatchCKA(f"{p[0]} vs {p[1]}") for p in self.pairs}

    @torch.no_grad()
    def update(
        self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]
    ) -> None:
        """Add one batch: features by layer name, each (B, T, d) (or (N, d) positions)."""
        first = student_features[self.pairs[0][0]]
        n = first.shape[:-1].numel()
        chosen = torch.randperm(n, generator=self._generator)[: self.positions]
        for (s_name, t_name), cka in self._cka.items():
            s, t = student_features[s_name], teacher_features[t_name]
            if s.shape[:-1] != first.shape[:-1] or t.shape[:-1] != first.shape[:-1]:
                raise ValueError(
                    f"{s_name} {tuple(s.shape)} and {t_name} {tuple(t.shape)} do not cover the "
                    f"same positions {tuple(first.shape[:-1])}"
                )
            index = chosen.to(s.device)
            cka.update(s.reshape(n, -1)[index], t.reshape(n, -1)[index.to(t.device)])

    def compute(self) -> dict[tuple[str, str], float]:
        """CKA per (student layer, teacher layer) pair."""
        return {pair: cka.compute() for pair, cka in self._cka.items()}


@torch.no_grad()
def token_measures(
    teacher: nn.Module,
    student: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    *,
    k: int = 5,
    n_bins: int = 10,
    c: float | None = None,
    cka_positions: int | None = 256,
    seed: int = 0,
) -> tuple[TokenAgreementResult, dict[tuple[str, str], float]]:
    """Run both models over ``batches`` of ``(x, y, index)`` (a DataLoader of an LM split) in eval
    mode and return the :class:`TokenAgreement` result and the :class:`TokenCKA` of their stages
    paired by relative depth (:func:`~kdscope.features.pair_layers`); ``cka_positions=None`` skips
    CKA. Models run on the device of their parameters; modes are restored."""
    pairs = []
    if cka_positions is not None:
        pairs = pair_layers(describe(student).stages, describe(teacher).stages)
    agreement = TokenAgreement(k, n_bins, c)
    cka = TokenCKA(pairs, cka_positions, seed) if pairs else None
    modes = teacher.training, student.training
    teacher.eval()
    student.eval()
    try:
        with (
            FeatureTap(teacher, [t for _, t in pairs], detach=True) as t_tap,
            FeatureTap(student, [s for s, _ in pairs], detach=True) as s_tap,
        ):
            for x, y, _ in batches:
                t_logits = teacher(x.to(next(teacher.parameters()).device))
                s_logits = student(x.to(next(student.parameters()).device))
                agreement.update(t_logits, s_logits.to(t_logits.device), y)
                if cka is not None:
                    cka.update(s_tap.features, t_tap.features)
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    return agreement.compute(), cka.compute() if cka is not None else {}


# Where `kdscope evaluate` draws agreement_profile_figure, beside the run's eval.json.
TOKEN_FIGURE = "token-agreement.png"


def agreement_profile_figure(result: TokenAgreementResult, title: str = "") -> Figure:
    """Two panels: top-1 agreement by position in the block, and by teacher confidence (bars:
    the share of positions in each bin, on a second axis)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.4, 3.6 + (0.4 if title else 0)), layout="constrained")
    by_pos, by_conf = fig.subplots(1, 2)
    by_pos.plot(np.arange(len(result.by_position)), result.by_position, color="C0")
    by_pos.set(xlabel="position in block", ylabel="top-1 agreement", ylim=(0, 1.02))
    edges = np.asarray(result.confidence_edges)
    centres = (edges[:-1] + edges[1:]) / 2
    share = np.asarray(result.confidence_counts) / max(result.n, 1)
    bars = by_conf.twinx()
    bars.bar(centres, share, width=np.diff(edges) * 0.9, color="0.85", zorder=0)
    bars.set_ylabel("share of positions")
    agree = [np.nan if a is None else a for a in result.by_confidence]
    by_conf.plot(centres, agree, "o-", color="C1")
    by_conf.set(xlabel="teacher confidence (top-1 probability)", ylabel="top-1 agreement")
    by_conf.set(xlim=(0, 1), ylim=(0, 1.02))
    by_conf.set_zorder(bars.get_zorder() + 1)
    by_conf.patch.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig
