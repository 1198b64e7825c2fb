"""Relation-based methods: the student imitates relations between examples (or between layers).

The contrastive ones with a memory bank (crd, crcd) are in ``contrastive.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.methods.adapters import flat, full_precision, require_maps
from kdscope.methods.base import FEATURES, BindContext, Method, Outputs, register_method
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, UNIT, Interval
from kdscope.models import classifier_of


def pairwise_distance(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between rows, with an exact zero diagonal and finite gradients."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance(e: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over distinct pairs (RKD's distance potential)."""
    d = pairwise_distance(e)
    return d / d[d > 0].mean()


def rkd_angle(e: Tensor) -> Tensor:
    """RKD's angle potential: cos of the angle at example i between j and k, all (i, j, k)."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@register_method("rkd")
class RelationalKD(Method):
    """Park, Kim, Lu, Cho 2019, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068.

    On the penultimate embeddings: loss = w_d * SmoothL1(psi_D(s), psi_D(t)) + w_a *
    SmoothL1(psi_A(s), psi_A(t)), distances normalised by their mean (:func:`rkd_distance`,
    :func:`rkd_angle`); w_d=25, w_a=50, CE weight 1 (paper, and mdistiller's CIFAR config).
    """

    family = "relation"
    paper = "Park et al. 2019, arXiv:1904.05068"
    layers = Layers.PENULTIMATE
    constraints = {
        "distance_weight": NON_NEGATIVE,
        "angle_weight": NON_NEGATIVE,
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        s = flat(out.student_features[0]).float()
        t = flat(out.teacher_features[0]).float()
        return {
            "rkd_distance": self.distance_weight
            * F.smooth_l1_loss(rkd_distance(s), rkd_distance(t)),
            "rkd_angle": self.angle_weight * F.smooth_l1_loss(rkd_angle(s), rkd_angle(t)),
        }


def similarity_matrix(f: Tensor) -> Tensor:
    """SP's G = f f^T (features flattened per example) with L2-normalised rows."""
    f = flat(f).float()
    return F.normalize(f @ f.T, p=2, dim=1)


@register_method("sp")
class SimilarityPreserving(Method):
    """Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682.

    loss = gamma * sum over layer pairs of ||G_t - G_s||_F^2 / B^2 (:func:`similarity_matrix`);
    gamma=3000, CE weight 1; default pair: the last stage outputs (the paper's CIFAR setting).
    """

    family = "relation"
    paper = "Tung & Mori 2019, arXiv:1907.09682"
    layers = Layers.LAST_STAGE
    constraints = {"gamma": NON_NEGATIVE, "student_layers": LAYERS, "teacher_layers": LAYERS}

    def __init__(
        self,
        gamma: float = 3000.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.gamma = gamma

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        loss = out.student_logits.new_zeros((), dtype=torch.float32)
        for f_s, f_t in zip(out.student_features, out.teacher_features, strict=True):
            b = f_s.shape[0]
            loss = loss + (similarity_matrix(f_t) - similarity_matrix(f_s)).pow(2).sum() / b**2
        return {"sp": self.gamma * loss}


def cosine_kernel_probs(f: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT's conditional probabilities: (cos + 1) / 2 between rows, normalised to sum 1 per row."""
    f = flat(f).float()
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    k = (f @ f.T + 1.0) / 2.0
    return k / k.sum(1, keepdim=True)


@register_method("pkt")
class ProbabilisticKT(Method):
    """Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer",
    ECCV 2018, arXiv:1803.10837.

    On the penultimate embeddings: loss = beta * mean_ij t_ij log(t_ij / s_ij) with the cosine
    kernel probabilities of :func:`cosine_kernel_probs`; the mean over all B^2 pairs (not a sum) is
    the authors' code, for which beta=30000 (CRD/mdistiller) is set; CE weight 1.
    """

    family = "relation"
    paper = "Passalis & Tefas 2018, arXiv:1803.10837"
    layers = Layers.PENULTIMATE
    constraints = {"beta": NON_NEGATIVE, "student_layers": LAYERS, "teacher_layers": LAYERS}

    def __init__(
        self,
        beta: float = 30000.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        eps = 1e-7
        s = cosine_kernel_probs(out.student_features[0])
        t = cosine_kernel_probs(out.teacher_features[0])
        return {"pkt": self.beta * (t * torch.log((t + eps) / (s + eps))).mean()}


def std_normalized(logits: Tensor) -> Tensor:
    """Logits divided by their standard deviation over classes (GLD's normalisation)."""
    return logits / logits.std(1, keepdim=True)


def distance_relation_loss(s: Tensor, t: Tensor) -> Tensor:
    """||N(D_t) - N(D_s)||_F^2 / n^2 for squared-distance matrices D with L2-normalised rows N."""

    def gram(x: Tensor) -> Tensor:
        sq = x.pow(2).sum(1)
        return F.normalize(sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * x @ x.T, p=2, dim=1)

    return (gram(t) - gram(s)).pow(2).sum() / s.shape[0] ** 2


@register_method("gld")
class GlobalLocalKD(Method):
    """Kim, Park, Jang, Ali, Oh, Bae 2021, "Distilling Global and Local Logits with Densely
    Connected Relations", ICCV 2021.

    The last feature map of each model is pooled globally and over a div x div grid; each pooled
    vector goes through that model's own classifier, giving global logits (B, C) and local logits (B
    * div^2, C). loss = alpha * KL_global + div^2 * KL_local + beta * relation, with KL between
    softmaxes of std-normalised logits (:func:`std_normalized`) and the relation term on the squared
    distances among all global and local logits (:func:`distance_relation_loss`); CE weight 1 -
    alpha. alpha=0.7, beta=500, div=2 as in the authors' code. The student's classifier is used (and
    trained) through a reference, not registered as a submodule. Deviation: the grid uses adaptive
    pooling, so map sides need not be multiples of div (identical when they are). On a segmenter
    (FCN) the map is its last stage and the classifier its 1x1 scorer applied to the pooled vectors
    as a linear layer: global logits score the image, local ones its div x div regions.
    """

    family = "relation"
    paper = "Kim et al. 2021, ICCV"
    layers = Layers.POOLED_MAP
    constraints = {
        "alpha": UNIT,
        "beta": NON_NEGATIVE,
        "div": Interval(1, None, integer=True),
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        alpha: float = 0.7,
        beta: float = 500.0,
        div: int = 2,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0 - alpha, student_layers, teacher_layers)
        self.alpha = alpha
        self.beta = beta
        self.div = div

    def bind(self, ctx: BindContext) -> None:
        require_maps("gld", {**ctx.student_shapes, **ctx.teacher_shapes})
        # A plain list keeps the models' classifiers out of this module's parameters and state_dict.
        self._heads = [
            classifier_of(ctx.student, pixelwise=True),
            classifier_of(ctx.teacher, pixelwise=True),
        ]
        roles = {"student": ctx.student_shapes, "teacher": ctx.teacher_shapes}
        for head, (role, shapes) in zip(self._heads, roles.items(), strict=True):
            channels = next(iter(shapes.values()))[1]
            if head.weight.shape[1] != channels:
                raise ValueError(
                    f"gld: the {role}'s classifier takes {head.weight.shape[1]} features but the "
                    f"chosen layer has {channels} channels; choose the map the classifier pools"
                )

    def logits(self, f: Tensor, head: nn.Linear | nn.Conv2d) -> tuple[Tensor, Tensor]:
        """Global (B, C) and local (B * div^2, C) logits of a feature map through ``head`` (a
        segmenter's 1x1 scorer applied to the pooled vectors, as a linear layer)."""
        weight = head.weight.flatten(1)

        def classify(v: Tensor) -> Tensor:
            return F.linear(v, weight, head.bias)

        local = F.adaptive_avg_pool2d(f, self.div).flatten(2).transpose(1, 2).flatten(0, 1)
        return classify(f.mean((2, 3))), classify(local)

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        s_global, s_local = self.logits(out.student_features[0].float(), self._heads[0])
        with torch.no_grad():
            t_global, t_local = self.logits(out.teacher_features[0].float(), self._heads[1])

        def kl(s: Tensor, t: Tensor) -> Tensor:
            log_p_s = F.log_softmax(std_normalized(s), dim=1)
            log_p_t = F.log_softmax(std_normalized(t), dim=1)
            return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)

        relation = distance_relation_loss(
            torch.cat([s_global, s_local]), torch.cat([t_global, t_local])
        )
        return {
            "gld_global": self.alpha * kl(s_global, t_global),
            "gld_local": self.div**2 * kl(s_local, t_local),
            "gld_relation": self.beta * relation,
        }


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
