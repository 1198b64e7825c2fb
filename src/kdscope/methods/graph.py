"""Graph-based distillation (gkd, Lee & Song 2019): the student imitates attention graphs over
the batch built between the singular-vector summaries of consecutive stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.methods.adapters import full_precision, require_maps
from kdscope.methods.base import FEATURES, BindContext, Method, Outputs, register_method
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, Interval


def top_singular_vectors(f: Tensor, k: int) -> Tensor:
    """Top-k right singular vectors (B, C, k) of each example's (H*W, C) feature matrix, no
    gradient.

    From the eigenvectors of the C x C matrix X^T X, largest first.
    """
    x = f.detach().float().flatten(2)
    _, vecs = torch.linalg.eigh(x @ x.transpose(1, 2))
    return vecs.flip(-1)[..., :k]


def attach(f: Tensor, v: Tensor) -> Tensor:
    """normalize(X^T X v): equal to v when v is an eigenvector (eigenvalue > 0), differentiable in
    X.

    One power-iteration step re-attaches an eigenvector computed without gradient to the features, a
    stable surrogate for the eigenvector's exact gradient (which divides by eigenvalue gaps).
    """
    x = f.float().flatten(2)
    return F.normalize((x @ (x.transpose(1, 2) @ v.unsqueeze(-1))).squeeze(-1), dim=1)


class _GraphAttention(nn.Module):
    """MHGD's multi-head attention: G_h = BN(FC(key))_h BN(FC(query))_h^T, heads x B x B."""

    def __init__(self, d_key: int, d_query: int, heads: int):
        super().__init__()
        self.dim, self.heads = (d_key + d_query) // 2, heads
        self.sender = nn.ModuleList(
            [nn.Linear(d_key, self.dim * heads), nn.BatchNorm1d(self.dim * heads)]
        )
        self.receiver = nn.ModuleList(
            [nn.Linear(d_query, self.dim * heads), nn.BatchNorm1d(self.dim * heads)]
        )

    def _project(self, layers: nn.ModuleList, x: Tensor, frozen: bool) -> Tensor:
        linear, bn = layers
        if (
            frozen
        ):  # the transfer loss must not train the attention (MHGD trains it on the teacher only)
            y = F.linear(x, linear.weight.detach(), linear.bias.detach())
            y = F.batch_norm(
                y,
                bn.running_mean,
                bn.running_var,
                bn.weight.detach(),
                bn.bias.detach(),
                False,
                0.0,
                bn.eps,
            )
        else:
            y = bn(linear(x))
        return y.view(len(x), self.dim, self.heads).permute(2, 0, 1)

    def forward(self, key: Tensor, query: Tensor, frozen: bool = False) -> Tensor:
        return self._project(self.sender, key, frozen) @ self._project(
            self.receiver, query, frozen
        ).transpose(1, 2)


class _Estimator(nn.Module):
    """MHGD's estimator: predicts a stage's vector from the previous stage's through the graph."""

    def __init__(self, d_in: int, d_out: int, heads: int):
        super().__init__()
        dim = (d_in + d_out) // 2
        self.embed = nn.Sequential(nn.Linear(d_in, dim), nn.BatchNorm1d(dim), nn.ReLU())
        self.out = nn.Linear(dim * heads, d_out)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, graph: Tensor) -> Tensor:
        heads, b, _ = graph.shape
        noise = torch.randn(heads, b, 1, device=graph.device)
        keep = (noise - noise.mean(0, keepdim=True) > 0).float()  # MHGD's random head dropout
        y = (graph.softmax(-1) * keep) @ self.embed(x)
        return F.normalize(self.out(y.permute(1, 0, 2).reshape(b, -1)), dim=-1)


@register_method("gkd")
class GraphKD(Method):
    """Lee & Song 2019, "Graph-based Knowledge Distillation by Multi-head Attention Network" (MHGD),
    BMVC 2019, arXiv:1907.02226.

    Each stage's map is compressed per example to its top right singular vector (teacher) or to the
    one of the student's top 4 that best matches the teacher's, sign-aligned (SVD compression of
    KD-SVD); between consecutive stages a multi-head attention builds graphs (heads x B x B) over
    the batch; loss = beta * sum over stage pairs and heads of the mean over rows of KL(softmax(tanh
    G_s) || softmax(tanh G_t)) (the reverse KL, as in the authors' code). The attention and an
    estimator are trained on the teacher alone by a self-supervised term ``gkd_mha`` = mean(1 -
    cos(estimate, v_t)); the transfer term sees them frozen. CE weight 1, 8 heads as in the authors'
    code.

    Deviations: the attention is trained jointly instead of before distillation; the authors clip
    the distillation gradient to the CE gradient's norm, which a loss cannot express, and sum the KL
    over rows: here rows are averaged (a sum grows with the batch and, unclipped, swamps the CE) and
    beta=1 is untuned; the teacher's singular vector sign is fixed to a non-negative sum; the
    student's singular vectors get the gradient of one power-iteration step (:func:`attach`); a
    student with other channel counts than the teacher gets a 1x1 conv projector first.
    """

    family = "relation"
    paper = "Lee & Song 2019, arXiv:1907.02226"
    layers = Layers.STAGES
    constraints = {
        "beta": NON_NEGATIVE,
        "heads": Interval(1, None, integer=True),
        "student_candidates": Interval(1, None, integer=True),
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        beta: float = 1.0,
        heads: int = 8,
        student_candidates: int = 4,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta
        self.heads = heads
        self.student_candidates = student_candidates

    def bind(self, ctx: BindContext) -> None:
        require_maps("gkd", {**ctx.student_shapes, **ctx.teacher_shapes})
        if len(self.teacher_layers) < 2:
            raise ValueError(
                "gkd builds graphs between consecutive stages: it needs >= 2 layer pairs, "
                f"got {self.teacher_layers}"
            )
        s_ch = [ctx.student_shapes[n][1] for n in self.student_layers]
        t_ch = [ctx.teacher_shapes[n][1] for n in self.teacher_layers]
        self.projectors = nn.ModuleList(
            nn.Identity() if s == t else nn.Conv2d(s, t, 1, bias=False)
            for s, t in zip(s_ch, t_ch, strict=True)
        )
        self.attention = nn.ModuleList(
            _GraphAttention(t_ch[i], t_ch[i - 1], self.heads) for i in range(1, len(t_ch))
        )
        self.estimators = nn.ModuleList(
            _Estimator(t_ch[i - 1], t_ch[i], self.heads) for i in range(1, len(t_ch))
        )

    def compress(self, f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C) singular vectors of student (with gradient) and teacher maps."""
        v_t = top_singular_vectors(f_t, 1)[..., 0]
        v_t = v_t * torch.where(v_t.sum(1, keepdim=True) < 0, -1.0, 1.0)
        cands = top_singular_vectors(f_s, self.student_candidates)
        cos = (cands * v_t.unsqueeze(-1)).sum(1)
        pick = cos.abs().argmax(1)
        rows = torch.arange(len(pick), device=pick.device)
        v_s = cands[rows, :, pick] * cos[rows, pick].sign().unsqueeze(1)
        return attach(f_s, v_s), v_t

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        vs, vt = [], []
        for proj, f_s, f_t in zip(
            self.projectors, out.student_features, out.teacher_features, strict=True
        ):
            v_s, v_t = self.compress(proj(f_s.float()), f_t)
            vs.append(v_s)
            vt.append(v_t)
        transfer = mha = out.student_logits.new_zeros((), dtype=torch.float32)
        for i, (attn, est) in enumerate(zip(self.attention, self.estimators, strict=True), start=1):
            graph_t = attn(vt[i], vt[i - 1])
            mha = mha + (1 - (est(vt[i - 1], graph_t) * vt[i]).sum(-1)).mean()
            log_p_s = F.log_softmax(torch.tanh(attn(vs[i], vs[i - 1], frozen=True)), -1)
            log_p_t = F.log_softmax(torch.tanh(attn(vt[i], vt[i - 1], frozen=True)), -1)
            kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1).mean(-1).sum()
            transfer = transfer + kl
        return {"gkd": self.beta * transfer, "gkd_mha": mha}
