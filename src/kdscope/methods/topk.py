"""The top-k teacher cache of language-model distillation: per position, the teacher's k largest
log-probabilities and their token ids (float16 and int16 at kdscope's vocabularies) plus the log of
the remaining mass, and the forward KL against it (:func:`topk_kd`). ``train.cache_topk=k`` makes
the Trainer's teacher cache hold these instead of full logits, for method ``kd``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F


def check_temperature(temperature: float) -> None:
    """Refuse a softmax temperature that is not > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


class TopKTargets(NamedTuple):
    """A top-k teacher cache entry for (...) positions.

    ``logprobs`` (..., k): the teacher's k largest log-probabilities at ``temperature``;
    ``ids`` (..., k): their token ids, in increasing id order (int16 when the vocabulary fits,
    else int32); ``tail`` (...): the log of the remaining mass, log sum of the other V - k
    probabilities (-inf when k = V), computed from the full distribution, not as log(1 - sum).
    """

    logprobs: Tensor
    ids: Tensor
    tail: Tensor
    temperature: float

    def take(self, index: Tensor) -> TopKTargets:
        """The entries of the examples ``index`` (the first dimension), e.g. one batch."""
        return TopKTargets(
            self.logprobs[index], self.ids[index], self.tail[index], self.temperature
        )

    def to(self, device: torch.device | str) -> TopKTargets:
        return TopKTargets(
            *(t.to(device, non_blocking=True) for t in self[:3]), temperature=self.temperature
        )


def _id_dtype(vocab_size: int) -> torch.dtype:
    return torch.int16 if vocab_size <= 2**15 else torch.int32


def topk_targets(
    teacher_logits: Tensor, k: int, temperature: float = 1.0, dtype: torch.dtype = torch.float16
) -> TopKTargets:
    """The :class:`TopKTargets` of teacher logits (..., V): log-probabilities at ``temperature``,
    kept in ``dtype`` (float16: ~1e-3 relative rounding; float32 keeps them exact)."""
    check_temperature(temperature)
    v = teacher_logits.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= v:
        raise ValueError(f"k must be an int in [1, {v}] (the vocabulary size), got {k!r}")
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    ids = log_p.topk(k, dim=-1).indices.sort(dim=-1).values
    tail = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return TopKTargets(
        log_p.gather(-1, ids).to(dtype), ids.to(_id_dtype(v)), tail.to(dtype), temperature
    )


def topk_kd(student_logits: Tensor, targets: TopKTargets) -> Tensor:
    """Forward KL against a top-k teacher cache, tau^2 * mean over positions, tau the cache's.

    With K the cached ids, p the teacher and q = softmax(z_S / tau) the student:
    loss = sum_{i in K} p_i (log p_i - log q_i) + p_tail (log p_tail - log q_tail), where p_tail is
    the stored remaining mass and q_tail = sum_{j not in K} q_j. The tail is one bucket: this is
    the exact KL between the two distributions coarsened to (K, rest), so it is <= the full KL
    (data processing), equal to it at k = V (bitwise, from a float32 cache, since the terms are then
    those of :func:`token_kd` in the same order) and 0 when the student's coarsened distribution
    matches. Bias: it fixes the student's total tail mass but not how that mass spreads over the
    tail tokens, so its gradient is not the full KL's unless the student's tail already has the
    teacher's shape. Top-k targets give biased estimates of the teacher's distribution (Anshumann
    et al. 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs", ACL 2025,
    arXiv:2503.16870); the tail bucket removes the renormalisation bias of dropping the tail, not
    this one.
    """
    v = student_logits.shape[-1]
    k = targets.logprobs.shape[-1]
    if student_logits.shape[:-1] != targets.logprobs.shape[:-1] or k > v:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match top-{k} targets for "
            f"positions {tuple(targets.logprobs.shape[:-1])}"
        )
    tau = targets.temperature
    log_q = F.log_softmax(student_logits.reshape(-1, v) / tau, dim=1)
    ids = targets.ids.reshape(-1, k).long()
    log_p = targets.logprobs.reshape(-1, k).float()
    total = F.kl_div(log_q.gather(1, ids), log_p, reduction="sum", log_target=True)
    if k < v:
        tail_p = targets.tail.reshape(-1).float()
        tail_q = log_q.scatter(1, ids, float("-inf")).logsumexp(1)
        # A teacher tail of exactly zero mass contributes 0 (0 log 0 = 0), whatever the student.
        term = torch.where(tail_p > float("-inf"), tail_p.exp() * (tail_p - tail_q), 0.0)
        total = total + term.sum()
    return total / log_q.shape[0] * tau**2


def topk_bytes_per_token(k: int, vocab_size: int, dtype: torch.dtype = torch.float16) -> int:
    """Bytes one position takes in a top-k cache: k log-probabilities and ids, plus the tail
    (k = 8 of V = 65 in float16: 8 * (2 + 2) + 2 = 34, against 130 for the full float16 row)."""
    if not 1 <= k <= vocab_size:
        raise ValueError(f"k must be in [1, {vocab_size}] (the vocabulary size), got {k}")
    value = torch.empty((), dtype=dtype).element_size()
    index = torch.empty((), dtype=_id_dtype(vocab_size)).element_size()
    return k * (value + index) + value
