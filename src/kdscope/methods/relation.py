"""Relation-based methods: the student imitates relations between examples (or between layers).

The contrastive ones with a memory bank (crd, crcd) are in ``contrastive.py``, graph-based
distillation (gkd) in ``graph.py``.
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
