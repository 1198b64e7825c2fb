"""Contrastive relation methods with a memory bank of embeddings: CRD and CRCD.

Both keep, for every training example, a student and a teacher embedding (two buffers of num_train x
feat_dim floats: 2 x 50,000 x 128 x 4 B = 51 MB for CIFAR, 1.3 GB for ImageNet-1k), updated with
momentum for the examples of each batch, and score each example against K negatives drawn from the
banks with CRD's NCE loss (Tian et al. 2020, Eq. 17, its code's form). The banks are buffers: they
move with the method, and checkpoints carry them, so a resumed run continues with the same banks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from kdscope.distributed import all_gather_cat, all_mean
from kdscope.methods.adapters import Embed, full_precision
from kdscope.methods.base import BindContext, Method, Needs, Outputs, register_method
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, POSITIVE, Interval

CONTRAST = {
    "beta": NON_NEGATIVE,
    "feat_dim": Interval(1, None, integer=True),
    "nce_k": Interval(1, None, integer=True),
    "nce_t": POSITIVE,
    "nce_m": Interval(0, 1, closed="left"),
    "student_layers": LAYERS,
    "teacher_layers": LAYERS,
}

EPS = 1e-7


def nce_loss(scores: Tensor, num_data: int, valid: Tensor | None = None) -> Tensor:
    """CRD's NCE loss for normalised scores (..., 1 + K), positive first; noise P_n = 1 / num_data.

    -E[log h(pos)] - K E[log(1 - h(neg))] with h(x) = x / (x + K P_n); mean over the leading dims
    (sum over negatives). ``valid`` (..., K) masks out negatives that are not negatives.
    """
    k = scores.shape[-1] - 1
    m_pn = k / num_data
    pos, neg = scores[..., 0], scores[..., 1:]
    log_d1 = torch.log(pos / (pos + m_pn + EPS))
    log_d0 = torch.log(m_pn / (neg + m_pn + EPS))
    if valid is not None:
        log_d0 = log_d0 * valid
    return -(log_d1 + log_d0.sum(-1)).mean()


class _ContrastBase(Method):
    """Embeddings, banks, negative sampling and bank updates shared by CRD and CRCD."""

    family = "relation"
    layers = Layers.PENULTIMATE
    constraints = CONTRAST

    def __init__(
        self,
        feat_dim: int,
        nce_k: int,
        nce_t: float,
        nce_m: float,
        student_layers: list[str] | None,
        teacher_layers: list[str] | None,
    ):
        needs = Needs(student_features=True, teacher_features=True, indices=True)
        super().__init__(needs, 1.0, student_layers, teacher_layers)
        self.feat_dim = feat_dim
        self.nce_k = nce_k
        self.nce_t = nce_t
        self.nce_m = nce_m

    def bind(self, ctx: BindContext) -> None:
        n = ctx.num_train
        if n < 2:
            raise ValueError(f"{self.name} needs at least 2 training examples, got {n}")
        s_dim = math.prod(ctx.student_shapes[self.student_layers[0]][1:])
        t_dim = math.prod(ctx.teacher_shapes[self.teacher_layers[0]][1:])
        self.embed_s = Embed(s_dim, self.feat_dim)
        self.embed_t = Embed(t_dim, self.feat_dim)
        self.num_data = n
        self.k = min(self.nce_k, n - 1)
        # CRD's init: uniform in +-1/sqrt(d/3), rows of unit norm in expectation.
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n, self.feat_dim).mul_(2 * stdv).sub_(stdv))
        self.register_buffer("memory_t", torch.rand(n, self.feat_dim).mul_(2 * stdv).sub_(stdv))
        # NCE normalisation constants, fixed on the first step (CRD's Z): mean score x num_data.
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))

    def embeddings(self, out: Outputs) -> tuple[Tensor, Tensor]:
        """The student's and the teacher's L2-normalised embeddings (B, feat_dim)."""
        f_s, f_t = out.student_features[0].float(), out.teacher_features[0].float()
        return self.embed_s(f_s), self.embed_t(f_t)

    def negatives(self, device: torch.device) -> Tensor:
        """K bank indices drawn uniformly (with replacement), shared by the batch's examples."""
        return torch.randint(self.num_data, (self.k,), device=device)

    def normalise(self, scores: Tensor, z: Tensor) -> Tensor:
        """scores / Z, Z fixed on first use to mean(scores) * num_data (without a host sync)."""
        first = all_mean(scores.detach().mean()) * self.num_data  # one Z on every DDP rank
        z.copy_(torch.where(z < 0, first, z))
        return scores / z

    @torch.no_grad()
    def update_banks(self, idx: Tensor, v_s: Tensor, v_t: Tensor) -> None:
        # Under DDP every rank writes the whole global batch, so the banks stay identical.
        idx, v_s, v_t = (all_gather_cat(t.detach()) for t in (idx, v_s, v_t))
        for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
            bank[idx] = F.normalize(
                bank[idx] * self.nce_m + v.detach().float() * (1 - self.nce_m), dim=1
            )


@register_method("crd")
class CRD(_ContrastBase):
    """Tian, Krishnan, Isola 2020, "Contrastive Representation Distillation", ICLR 2020,
    arXiv:1910.10699.

    Penultimate features of both models are embedded (linear, 128-d, L2-normalised); the student's
    embedding is contrasted against the teacher bank (its own example's entry positive, K=16384
    negatives) and the teacher's against the student bank; scores exp(v . m / tau) / Z, tau=0.07,
    NCE loss (:func:`nce_loss`); banks updated with momentum 0.5. loss = 0.8 * (s-side + t-side), CE
    weight 1, no KD term (the paper's CRD row and mdistiller's config).

    Memory: two num_train x 128 float buffers (see module docstring). Deviations: negatives are
    drawn uniformly once per batch and shared by its examples (the reference draws K per example,
    from other classes by default), and an example's own index among them is masked out; K is capped
    at num_train - 1.
    """

    paper = "Tian et al. 2020, arXiv:1910.10699"

    def __init__(
        self,
        beta: float = 0.8,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(feat_dim, nce_k, nce_t, nce_m, student_layers, teacher_layers)
        self.beta = beta

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        v_s, v_t = self.embeddings(out)
        idx = out.indices
        neg = self.negatives(idx.device)
        valid = (neg.unsqueeze(0) != idx.unsqueeze(1)).float()

        def scores(anchor: Tensor, bank: Tensor) -> Tensor:
            pos = (anchor * bank[idx]).sum(1, keepdim=True)
            # index_select: several times faster than bank[neg] for K = 16384 rows on CPU
            negatives = bank.index_select(0, neg)
            return torch.exp(torch.cat([pos, anchor @ negatives.T], dim=1) / self.nce_t)

        s_side = self.normalise(scores(v_s, self.memory_t), self.z_s)
        t_side = self.normalise(scores(v_t, self.memory_s), self.z_t)
        loss = nce_loss(s_side, self.num_data, valid) + nce_loss(t_side, self.num_data, valid)
        self.update_banks(idx, v_s, v_t)
        return {"crd": self.beta * loss}


def _cosine_of_differences(
    cv: Tensor, ca: Tensor, va: Tensor, cc: Tensor, aa: Tensor, vv: Tensor
) -> Tensor:
    """cos(c - a, v - a) from inner products <c,v>, <c,a>, <v,a> and squared norms (broadcast)."""
    num = cv - ca - va + aa
    return num / ((cc + aa - 2 * ca).clamp_min(EPS) * (vv + aa - 2 * va).clamp_min(EPS)).sqrt()


def relation_cosines(v: Tensor, anchors: Tensor, candidates: Tensor | None = None) -> Tensor:
    """cos(c - a_j, v_i - a_j) for examples i and anchors j of the batch, from inner products only
    (never the B x B x N x D difference tensor).

    With ``candidates`` (N, D), shared by all i: (B, B, N). Without: the candidate of example i is
    its own anchor a_i (CRCD's positive): (B, B).
    """
    vv = v.pow(2).sum(1).view(-1, 1)  # (B_i, 1)
    aa = anchors.pow(2).sum(1).view(1, -1)  # (1, B_j)
    va = v @ anchors.T  # (B_i, B_j)
    if candidates is None:
        ca = anchors @ anchors.T  # c_i = a_i
        cv = (anchors * v).sum(1, keepdim=True)
        return _cosine_of_differences(cv, ca, va, aa.view(-1, 1), aa, vv)
    cc = candidates.pow(2).sum(1).view(1, 1, -1)
    cv = (v @ candidates.T).unsqueeze(1)  # (B_i, 1, N)
    ca = (anchors @ candidates.T).unsqueeze(0)  # (1, B_j, N)
    return _cosine_of_differences(cv, ca, va.unsqueeze(-1), cc, aa.unsqueeze(-1), vv.unsqueeze(-1))


@register_method("crcd")
class CRCD(_ContrastBase):
    """Zhu, Tang, Chen, Yu, Liu, Rong, Yang, Wang 2021, "Complementary Relation Contrastive
    Distillation", CVPR 2021, arXiv:2103.16367.

    Contrasts relations instead of embeddings: for example i and anchor j of the batch, the student
    relation v_i - a_j (a_j the teacher bank entry of j) should match the teacher relation m_i - a_j
    (m_i = bank entry of i) and not m_k - a_j for K=500 negatives k; scores exp(cos / tau) / Z with
    tau=0.05, CRD's NCE loss over the B(B - 1) pairs j != i, symmetrically with the roles of the two
    banks swapped; 128-d linear embeddings of the penultimate features, momentum 0.5. loss = 1.0 *
    (s-side + t-side), CE weight 1 (the authors' released code's defaults, no KD term). On a
    segmenter (FCN) the penultimate features are its scorer's input, the last stage's whole map,
    flattened: the embeddings then see every pixel's features.

    Memory: two num_train x 128 float buffers (see module docstring). Deviations: only the feature
    relation (the paper also contrasts gradient relations); anchors j = i are skipped (their teacher
    relation is the zero vector); negatives are drawn once per batch and shared, those equal to i or
    j masked out; K is capped at num_train - 1; cosines come from inner products (exact, less
    memory).
    """

    paper = "Zhu et al. 2021, arXiv:2103.16367"

    def __init__(
        self,
        beta: float = 1.0,
        feat_dim: int = 128,
        nce_k: int = 500,
        nce_t: float = 0.05,
        nce_m: float = 0.5,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(feat_dim, nce_k, nce_t, nce_m, student_layers, teacher_layers)
        self.beta = beta

    def side(self, v: Tensor, bank: Tensor, idx: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """Scores (B, B, 1 + K) of v's relations against ``bank``'s, and the negatives' validity."""
        anchors = bank[idx]
        pos = relation_cosines(v, anchors).unsqueeze(-1)
        negs = relation_cosines(v, anchors, bank.index_select(0, neg))
        scores = torch.exp(torch.cat([pos, negs], dim=2) / self.nce_t)
        negs_idx = neg.view(1, 1, -1)
        valid = (negs_idx != idx.view(-1, 1, 1)) & (negs_idx != idx.view(1, -1, 1))
        return scores, valid.float()

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        v_s, v_t = self.embeddings(out)
        idx = out.indices
        neg = self.negatives(idx.device)
        off_diag = ~torch.eye(len(idx), dtype=torch.bool, device=idx.device)
        loss = v_s.new_zeros(())
        for v, bank, z in ((v_s, self.memory_t, self.z_s), (v_t, self.memory_s, self.z_t)):
            scores, valid = self.side(v, bank, idx, neg)
            scores = self.normalise(scores[off_diag], z)
            loss = loss + nce_loss(scores, self.num_data, valid[off_diag])
        self.update_banks(idx, v_s, v_t)
        return {"crcd": self.beta * loss}
