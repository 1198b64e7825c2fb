"""Feature-based methods: the student imitates the teacher's intermediate features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdscope.features import resolve_layer
from kdscope.methods.adapters import (
    Connector,
    ConvRegressor,
    flat,
    full_precision,
    match_spatial,
    require_maps,
)
from kdscope.methods.base import FEATURES, BindContext, Method, Needs, Outputs, register_method
from kdscope.methods.layers import Layers
from kdscope.methods.params import LAYERS, NON_NEGATIVE, POSITIVE, UNIT, Interval
from kdscope.methods.response import kd_div
from kdscope.metrics.similarity import cka_from_grams, linear_gram


@register_method("fitnet")
class FitNet(Method):
    """Romero, Ballas, Kahou, Chassang, Gatta, Bengio 2015, "FitNets: Hints for Thin Deep Nets",
    ICLR 2015, arXiv:1412.6550.

    loss = beta * MSE(r(f_s), f_t) at one hint layer pair, r a conv regressor
    (:class:`ConvRegressor`); default pair: the middle one of the models' stage pairs. beta=100 and
    CE weight 1 follow CRD/mdistiller, which train hint + CE in one stage (the paper does not give a
    single weight).

    The paper's two-stage schedule is ``hint_epochs > 0``: during epochs < hint_epochs only the hint
    term is returned and :meth:`ce_weight_at` is 0 (the Trainer must honour it); afterwards the
    student is trained with KD (``temperature``, ``alpha``, CE weight 1 - alpha) and no hint term.
    Deviation: during the hint stage the layers after the guided one get no hint gradient but are
    not frozen (the optimizer's weight decay and momentum may still move them).
    """

    family = "feature"
    paper = "Romero et al. 2015, arXiv:1412.6550"
    layers = Layers.MIDDLE_STAGE
    constraints = {
        "beta": NON_NEGATIVE,
        "hint_epochs": Interval(0, None, integer=True),
        "temperature": POSITIVE,
        "alpha": UNIT,
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        beta: float = 100.0,
        hint_epochs: int = 0,
        temperature: float = 4.0,
        alpha: float = 0.9,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        needs = (
            Needs(teacher_logits=True, student_features=True, teacher_features=True)
            if hint_epochs
            else FEATURES
        )
        ce_weight = 1.0 - alpha if hint_epochs else 1.0
        super().__init__(needs, ce_weight, student_layers, teacher_layers)
        self.beta = beta
        self.hint_epochs = hint_epochs
        self.temperature = temperature
        self.alpha = alpha

    def bind(self, ctx: BindContext) -> None:
        s, t = self.student_layers[0], self.teacher_layers[0]
        self.regressor = ConvRegressor(ctx.student_shapes[s], ctx.teacher_shapes[t])

    def ce_weight_at(self, epoch: int) -> float:
        """CE weight in ``epoch`` (0-based): 0 during the hint stage, ``ce_weight`` after it."""
        return 0.0 if epoch < self.hint_epochs else self.ce_weight

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        if self.hint_epochs and out.epoch >= self.hint_epochs:
            kd = kd_div(out.student_logits.float(), out.teacher_logits.float(), self.temperature)
            return {"kd": self.alpha * kd}
        hint = F.mse_loss(self.regressor(out.student_features[0]), out.teacher_features[0])
        return {"hint": self.beta * hint}


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """AT's spatial attention: normalize(mean_c |f_c|^p), flattened to (B, H*W), unit L2 norm."""
    return F.normalize(f.float().abs().pow(p).mean(1).flatten(1), dim=1)


@register_method("at")
class AttentionTransfer(Method):
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention", ICLR 2017,
    arXiv:1612.03928.

    loss = beta * sum over stage pairs of mean((A_s - A_t)^2), A from :func:`attention_map`;
    beta=1000, p=2, weighted as the authors' code (attention-transfer ``cifar.py`` and
    ``imagenet.py``) and mdistiller, RepDistiller and torchdistill weight it; the paper's Eq. 2 has
    beta / 2 on an unsquared norm, a different scale. The larger map is average-pooled to the
    smaller one's size. CE weight 1.
    """

    family = "feature"
    paper = "Zagoruyko & Komodakis 2017, arXiv:1612.03928"
    layers = Layers.STAGES
    constraints = {
        "beta": NON_NEGATIVE,
        "p": POSITIVE,
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        beta: float = 1000.0,
        p: float = 2.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta
        self.p = p

    def bind(self, ctx: BindContext) -> None:
        require_maps("at", {**ctx.student_shapes, **ctx.teacher_shapes})

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        loss = out.student_logits.new_zeros((), dtype=torch.float32)
        for f_s, f_t in zip(out.student_features, out.teacher_features, strict=True):
            f_s, f_t = match_spatial(f_s, f_t)
            loss = loss + (attention_map(f_s, self.p) - attention_map(f_t, self.p)).pow(2).mean()
        return {"at": self.beta * loss}


def bn_before(model: nn.Module, layer: str, channels: int) -> nn.BatchNorm2d | nn.BatchNorm1d:
    """The BatchNorm that produces the (pre-activation) feature captured at ``layer``.

    Taken as the last BatchNorm with ``channels`` features registered before the captured module
    (for an ``":in"`` capture) or inside it (for an output capture), skipping shortcut branches
    (modules named ``downsample`` or ``shortcut``). Registration order is construction order, which
    in the zoo models is execution order. For a residual sum this is the BN of the residual branch,
    as in OFD's code.
    """
    take_input = layer.endswith(":in")
    name = layer.removesuffix(":in")
    target = resolve_layer(model, name)
    found = None
    inside = False
    for qualified, module in model.named_modules():
        if module is target:
            if take_input:
                break
            inside = True
        elif inside and not qualified.startswith(name + "."):
            break
        parts = set(qualified.split("."))
        if (
            isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d))
            and module.num_features == channels
            and not parts & {"downsample", "shortcut"}
        ):
            found = module
    if found is None:
        raise ValueError(
            f"ofd needs a BatchNorm with {channels} channels before teacher layer {layer!r} "
            f"to set its margin; {type(model).__name__} has none there "
            "(use layers that follow a BatchNorm)"
        )
    return found


def ofd_margin(bn: nn.BatchNorm2d | nn.BatchNorm1d) -> Tensor:
    """Per-channel margin m = E[x | x < 0] for x ~ N(beta, gamma^2) from the BN's affine parameters.

    m = beta - gamma * phi(beta / gamma) / Phi(-beta / gamma), or -3 gamma where Phi(-beta / gamma)
    <= 0.001 (almost no negative responses), as in OFD's code.
    """
    s = bn.weight.detach().abs().double().clamp_min(1e-12)
    m = bn.bias.detach().double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 1e-3, m - s * pdf / cdf.clamp_min(1e-3), -3 * s)
    return margin.float()


def ofd_partial_l2(source: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """OFD's partial L2: with target = max(teacher, margin), the summed squared error over the
    elements where source > target or target > 0 (a student response below a negative target is
    not penalised: the teacher's ReLU would zero both)."""
    target = torch.maximum(teacher, margin)
    mask = (source > target) | (target > 0)
    return ((source - target).pow(2) * mask).sum()


@register_method("ofd")
class OverhaulFD(Method):
    """Heo, Kim, Yun, Park, Kwak, Choi 2019, "A Comprehensive Overhaul of Feature Distillation",
    ICCV 2019, arXiv:1904.01866.

    Pre-ReLU features (the models' pre-activation layers), the student's through a 1x1 conv + BN;
    target max(f_t, m) with the per-channel margin m from the teacher's BN (:func:`ofd_margin`);
    partial L2: squared error where student > target or target > 0, summed, divided by the batch
    size, stage i of n weighted 1 / 2^(n - i - 1); loss = 1e-3 * sum; CE weight 1 (the paper's CIFAR
    code). Deviation: maps of different sizes are matched by average pooling (the paper pairs equal
    sizes).
    """

    family = "feature"
    paper = "Heo et al. 2019, arXiv:1904.01866"
    layers = Layers.PREACT_STAGES
    constraints = {"beta": NON_NEGATIVE, "student_layers": LAYERS, "teacher_layers": LAYERS}

    def __init__(
        self,
        beta: float = 1e-3,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta

    def bind(self, ctx: BindContext) -> None:
        self.connectors = nn.ModuleList()
        for i, (s, t) in enumerate(zip(self.student_layers, self.teacher_layers, strict=True)):
            s_shape, t_shape = ctx.student_shapes[s], ctx.teacher_shapes[t]
            self.connectors.append(Connector(s_shape[1], t_shape[1], maps=len(s_shape) == 4))
            margin = ofd_margin(bn_before(ctx.teacher, t, t_shape[1]))
            self.register_buffer(f"margin{i}", margin.view(1, -1, *([1] * (len(t_shape) - 2))))

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        n = len(self.connectors)
        loss = out.student_logits.new_zeros((), dtype=torch.float32)
        pairs = zip(self.connectors, out.student_features, out.teacher_features, strict=True)
        for i, (conn, f_s, f_t) in enumerate(pairs):
            f_s, f_t = match_spatial(conn(f_s).float(), f_t.float())
            partial = ofd_partial_l2(f_s, f_t, getattr(self, f"margin{i}"))
            loss = loss + partial / f_s.shape[0] / 2 ** (n - i - 1)
        return {"ofd": self.beta * loss}


@register_method("cka")
class CKADistillation(Method):
    """Minimise 1 - linear CKA (Kornblith, Norouzi, Lee, Hinton 2019, "Similarity of Neural Network
    Representations Revisited", ICML 2019, arXiv:1905.00414) between student and teacher features.

    loss = beta * sum over stage pairs of (1 - CKA(f_s, f_t)), CKA over the batch with features
    flattened per example; no adapter is needed as CKA compares Gram matrices. The estimator is the
    debiased one (Song et al. 2012), the one kdscope's retention metrics report, because flattened
    maps have far more features than a batch has examples, where biased CKA is inflated; batches of
    fewer than 4 examples fall back to biased CKA. kdscope's formulation: beta=1 and CE weight 1 are
    not tuned values from a paper (CKA-based distillation, e.g. Zhou et al. 2024, arXiv:2401.11824,
    uses other weights and terms).
    """

    family = "feature"
    paper = "Kornblith et al. 2019, arXiv:1905.00414 (measure)"
    layers = Layers.STAGES
    constraints = {"beta": NON_NEGATIVE, "student_layers": LAYERS, "teacher_layers": LAYERS}

    def __init__(
        self,
        beta: float = 1.0,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta

    @full_precision
    def forward(self, out: Outputs) -> dict[str, Tensor]:
        loss = out.student_logits.new_zeros((), dtype=torch.float32)
        for f_s, f_t in zip(out.student_features, out.teacher_features, strict=True):
            # The B x d Gram products in float32 (in float64 they made the step 1.5x kd's), the
            # B x B CKA arithmetic, which cancels, in float64.
            gram_s = linear_gram(flat(f_s).float()).double()
            gram_t = linear_gram(flat(f_t).float()).double()
            cka = cka_from_grams(gram_s, gram_t, debiased=f_s.shape[0] >= 4)
            loss = loss + (1.0 - cka).float()
        return {"cka": self.beta * loss}


@register_method("uet")
class UncertaintyFD(Method):
    """Feature imitation with MC-dropout knowledge uncertainty, after Yi, Mao, Liu, Li, Gu, Zhang,
    Chang, Wang 2024, "Teaching with Uncertainty: Unleashing the Potential of Knowledge Distillation
    in Object Detection" (UET), arXiv:2406.06999.

    Classification reduction (the paper targets detectors; only its abstract was verified): at the
    last stage pair, ``samples`` MC-dropout draws of the teacher map (element-wise dropout with rate
    ``p``, inverted scaling) give a mean mu and a per-element standard deviation u (the knowledge
    uncertainty); the augmented target is mu + u (the uncertainty added as a residual), and the
    student, through a 1x1 conv + BN connector, minimises beta * MSE to it. Assumed: p=0.1,
    samples=8, and beta=100, CE weight 1 (FitNet's MSE weight in CRD/mdistiller, the feature loss
    UET plugs into).
    """

    family = "feature"
    paper = "Yi et al. 2024, arXiv:2406.06999 (reduced)"
    layers = Layers.LAST_STAGE
    constraints = {
        "beta": NON_NEGATIVE,
        "p": Interval(0, 1, closed="neither"),
        "samples": Interval(2, None, integer=True),
        "student_layers": LAYERS,
        "teacher_layers": LAYERS,
    }

    def __init__(
        self,
        beta: float = 100.0,
        p: float = 0.1,
        samples: int = 8,
        student_layers: list[str] | None = None,
        teacher_layers: list[str] | None = None,
    ):
        super().__init__(FEATURES, 1.0, student_layers, teacher_layers)
        self.beta = beta
        self.p = p
        self.samples = samples

    def bind(self, ctx: BindContext) -> None:
        s_shape = ctx.student_shapes[self.student_layers[0]]
        t_shape = ctx.teacher_shapes[self.teacher_layers[0]]
        self.connector = Connector(s_shape[1], t_shape[1], maps=len(s_shape) == 4)

    @torch.no_grad()
    def augmented_target(self, f_t: Tensor) -> Tensor:
        """mu + u over ``samples`` MC-dropout draws of the teacher features.

        An element's n draws are each 0 or c = f / (1 - p), so mu and u depend only on the number
        k ~ Binomial(n, 1 - p) of draws that kept it: mu = c k / n and u = |c| sqrt(k (n - k) /
        (n (n - 1))) (the n - 1 of torch.std). One binomial draw per element thus has the
        distribution of n dropout draws, at a third of their cost.
        """
        f, n = f_t.float(), self.samples
        kept = torch.binomial(torch.full_like(f, n), torch.full_like(f, 1 - self.p))
        c = f / (1 - self.p)
        return c * kept / n + c.abs() * torch.sqrt(kept * (n - kept) / (n * (n - 1)))

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        f_s, f_t = match_spatial(
            self.connector(out.student_features[0]).float(), out.teacher_features[0]
        )
        return {"uet": self.beta * F.mse_loss(f_s, self.augmented_target(f_t))}
