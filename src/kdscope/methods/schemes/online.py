"""Online distillation: peers that teach each other while they all train (deep mutual learning)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from kdscope.methods.base import NO_TEACHER, BindContext, Method, Outputs, register_method
from kdscope.methods.params import Either, Interval, NameList
from kdscope.metrics import accuracy
from kdscope.models import create_model, describe


@register_method("dml")
class DeepMutualLearning(Method):
    """Zhang, Xiang, Hospedales, Lu 2018, "Deep Mutual Learning", CVPR 2018, arXiv:1706.00384.

    K peers learn together; peer k minimises L_k = CE(z_k, y) + 1/(K-1) sum_{l != k} KL(p_l || p_k)
    with p = softmax(z) (no temperature), the other peers' distributions held constant. The
    Trainer's student is peer 0: its CE is the Trainer's (CE weight 1) and this method returns its
    KL term (``kl_peer0``) plus ``ce_peerk`` and ``kl_peerk`` for the peers 1..K-1 it holds as
    submodules, so the one optimizer trains every peer in the one backward.

    ``peers``: how many extra peers of the student's architecture (built with ``create_model`` from
    the student's ModelInfo ``spec``, or re-initialised copies of a non-zoo student), or a list of
    zoo model names, one per extra peer. K = 1 + number of extra peers. The peers are built at the
    first ``bind`` and kept, so a second ``fit`` continues training them, as it does the student.
    Read their accuracies with :func:`evaluate_peers`; the checkpoints' method state saves them.

    Deviation: the paper updates the peers one after another within a step (peer 2 sees peer 1's
    updated predictions); here all peers step together from the same forward pass, which one
    backward through one optimizer implies.
    """

    family = "scheme"
    paper = "Zhang et al. 2018, arXiv:1706.00384"
    constraints = {"peers": Either((Interval(1, None, integer=True), NameList()))}

    def __init__(self, peers: int | list[str] = 1):
        super().__init__(NO_TEACHER)
        self.peers = peers

    def bind(self, ctx: BindContext) -> None:
        if not hasattr(self, "peer_models"):  # peers persist across fits, like the student
            # The Trainer seeds just before bind, as run() seeds just before building the student:
            # on the same seed the peers would be exact copies of it, their KL terms 0 forever.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(torch.initial_seed() + 1)
                peers = build_peers(ctx.student, self.peers, ctx.num_classes)
            self.peer_models = nn.ModuleList(peers)

    def forward(self, out: Outputs) -> dict[str, Tensor]:
        logits = [out.student_logits] + [peer(out.inputs) for peer in self.peer_models]
        log_probs = [F.log_softmax(z.float(), dim=1) for z in logits]
        k = len(logits)
        terms: dict[str, Tensor] = {}
        for i, log_p in enumerate(log_probs):
            if i > 0:
                terms[f"ce_peer{i}"] = F.cross_entropy(logits[i].float(), out.labels)
            kl = sum(
                F.kl_div(log_p, other.detach(), reduction="batchmean", log_target=True)
                for j, other in enumerate(log_probs)
                if j != i
            )
            terms[f"kl_peer{i}"] = kl / (k - 1)
        return terms


def build_peers(student: nn.Module, peers: int | list[str], num_classes: int) -> list[nn.Module]:
    """Fresh peers for DML: ``peers`` copies of the student's architecture, or the named zoo models
    (with the student's class count and input channels)."""
    spec = describe(student).spec
    if isinstance(peers, int):
        if spec:
            return [
                create_model(spec.name, num_classes, spec.in_channels, **spec.kwargs)
                for _ in range(peers)
            ]
        return [reinitialised_copy(student) for _ in range(peers)]
    if not spec:
        raise ValueError(
            f"peers given by name ({peers}) need the student's input channels, which only zoo "
            f"models record (their ModelInfo spec); {type(student).__name__} has none. Give the "
            "number of peers instead to copy the student's architecture."
        )
    return [create_model(name, num_classes, spec.in_channels) for name in peers]


def reinitialised_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every submodule's ``reset_parameters`` called."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if module is not twin and hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return twin


def evaluate_peers(
    student: nn.Module, method: DeepMutualLearning, dataset: Dataset, batch_size: int = 512
) -> list[float]:
    """Top-1 accuracy of every DML peer on ``dataset``: peer 0 (the student) first."""
    if not hasattr(method, "peer_models"):
        raise ValueError("the DML method has no peers yet: they are built when training starts")
    device = next(student.parameters()).device
    return [
        accuracy(model, dataset, batch_size, device) for model in [student, *method.peer_models]
    ]
