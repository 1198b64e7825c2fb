"""``explain_student(...)``: Grad-CAM and UniCAM figures and perturbed FSS/RS, student vs base."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdscope.data import DataBundle, collate, fetch
from kdscope.explain.dense import image_level
from kdscope.explain.figures import plot_map_grid, plot_relevance, plot_token_relevance
from kdscope.explain.gradcam import grad_cam
from kdscope.explain.relevance import (
    Estimator,
    default_layer_pairs,
    perturbed_relevance,
    unnormalize,
)
from kdscope.explain.tokens import token_grad_cam, token_unicam
from kdscope.explain.unicam import batch_composition, unicam
from kdscope.metrics.relevance import DEFAULT_TEXT_MODEL, label_embeddings

Layers = Sequence[str] | Sequence[tuple[str, str]] | None


def explain_student(
    student: nn.Module,
    base: nn.Module,
    data: DataBundle,
    teacher: nn.Module | None = None,
    layers: Layers = None,
    num_images: int = 16,
    out_dir: str | Path = "explain",
    split: str = "test",
    embeddings: str | Tensor = DEFAULT_TEXT_MODEL,
    batch_size: int = 64,
    max_batches: int | None = 8,
    keep_fraction: float = 0.5,
    estimator: Estimator = "bias_corrected",
    seed: int = 0,
) -> dict:
    """Explain what the student learned relative to its base model (and to its teacher).

    Sentence classifiers (``data.inputs == "tokens"``) get ``out_dir/figures/tokens.png``
    instead: each sentence with its tokens highlighted by Grad-CAM and UniCAM relevance
    (:mod:`kdscope.explain.tokens`), the maps in ``relevance.json`` and no ROAD scores. Log-mel
    spectrograms are drawn as such, the maps over time x frequency.

    Writes ``out_dir/figures/explanations.png`` (rows: ``num_images`` images of mixed classes;
    columns: the input, then per layer Grad-CAM of the base and of the student and UniCAM's
    distilled and residual maps), ``out_dir/figures/relevance.png`` (RS and FSS per layer) and
    ``out_dir/relevance.json``. With a ``teacher``, the same again with the teacher in the base's
    place (``*_teacher.png``; the ``"teacher"`` entry of the JSON): the student's and the teacher's
    unique features.

    Args:
        student, base, teacher: models on one device; each is put in eval mode while explained.
        data: the dataset bundle (its normalisation is undone for ROAD, its class names label rows
            and give the label embeddings).
        layers: student/base layer names (the same in both) or ``(student_layer, other_layer)``
            pairs; default: the models' stages paired by relative depth.
        num_images: rows of the grid; they form the one batch their UniCAM maps depend on.
        out_dir: where figures and JSON go.
        split: ``"test"``, ``"val"`` or ``"train"``.
        embeddings: label embeddings: a text model name (see
            :func:`kdscope.metrics.relevance.label_embeddings`) or a (classes x dim) matrix.
        batch_size, max_batches: batches (shuffled with ``seed``) for FSS/RS.
        keep_fraction: pixels each explanation keeps for FSS/RS (ROAD).
        estimator: ``"bias_corrected"`` R* or ``"v_statistic"`` dCor^2.
        seed: image choice, batch order and ROAD noise.

    Returns:
        What ``relevance.json`` holds.
    """
    if not isinstance(data, DataBundle):
        raise TypeError(f"data must be a kdscope DataBundle, got {type(data).__name__}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    if num_images < 4:
        raise ValueError(f"num_images must be >= 4 (UniCAM's batch), got {num_images}")
    # Segmenters and detectors are explained through their image-level scores (explain.dense).
    models, data, layers = image_level(
        {"student": student, "base": base, "teacher": teacher}, data, layers
    )
    student, base, teacher = models["student"], models["base"], models["teacher"]
    dataset = getattr(data, split)
    out = Path(out_dir)
    label_matrix = label_embeddings(data.class_names, embeddings).float()
    device = next(student.parameters()).device
    images, labels, indices = _figure_batch(dataset, num_images, seed)
    images = images.to(device)

    others = {"base": base} if teacher is None else {"base": base, "teacher": teacher}
    report: dict = {
        "split": split,
        "label_embeddings": embeddings if isinstance(embeddings, str) else "given matrix",
        "figure_batch": batch_composition(labels, indices),
        "figures": [],
    }
    if data.inputs == "tokens":
        return _explain_tokens(
            student,
            others,
            dataset,
            layers,
            images,
            labels,
            label_matrix,
            out,
            [data.class_names[int(c)] for c in labels],
            report,
        )
    for role, other in others.items():
        pairs = _layer_pairs(student, other, layers)
        suffix = "" if role == "base" else f"_{role}"
        grid = _map_columns(student, other, role, pairs, images, labels, label_matrix)
        report["figures"].append(
            str(
                plot_map_grid(
                    unnormalize(images, data.mean, data.std),
                    grid,
                    out / "figures" / f"explanations{suffix}.png",
                    row_labels=[data.class_names[int(c)] for c in labels],
                    title=f"{data.name}: student vs {role} ({split} split)",
                    spectrogram=data.view == "logmel",
                )
            )
        )
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=collate,
        )
        relevance = perturbed_relevance(
            student,
            other,
            loader,
            label_matrix,
            layers=pairs,
            keep_fraction=keep_fraction,
            estimator=estimator,
            mean=data.mean,
            std=data.std,
            max_batches=max_batches,
            seed=seed,
        ).to_dict()
        report[role] = relevance
        chart = out / "figures" / f"relevance{suffix}.png"
        report["figures"].append(str(plot_relevance(relevance, chart, f"student vs {role}", role)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "relevance.json").write_text(json.dumps(report, indent=2))
    return report


def _explain_tokens(
    student, others, dataset, layers, ids, labels, label_matrix, out, names, report
):
    """Token relevance figures and maps for sentence classifiers (no ROAD: see explain.tokens)."""
    tokenizer = getattr(dataset, "tokenizer", None)
    lengths = (ids != dataset.pad_id).sum(1).tolist()
    rows = [ids[i, : lengths[i]].tolist() for i in range(len(lengths))]
    sentences = [
        tokenizer.convert_ids_to_tokens(r) if tokenizer is not None else [str(t) for t in r]
        for r in rows
    ]
    report["sentences"] = sentences
    for role, other in others.items():
        pairs = _layer_pairs(student, other, layers)
        suffix = "" if role == "base" else f"_{role}"
        columns = _map_columns(student, other, role, pairs, ids, labels, label_matrix, tokens=True)
        path = out / "figures" / f"tokens{suffix}.png"
        report["figures"].append(
            str(plot_token_relevance(sentences, columns, path, names, f"student vs {role}"))
        )
        report[role] = {
            "layers": {},
            "token_relevance": {
                name: [maps[i, : lengths[i]].tolist() for i in range(len(lengths))]
                for name, maps in columns
            },
            "perturbed": "not computed: ROAD imputes pixels and has no counterpart on token ids",
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "relevance.json").write_text(json.dumps(report, indent=2))
    return report


def _layer_pairs(student: nn.Module, other: nn.Module, layers: Layers) -> list[tuple[str, str]]:
    if layers is None:
        return default_layer_pairs(student, other)
    return [(layer, layer) if isinstance(layer, str) else tuple(layer) for layer in layers]


def _map_columns(
    student: nn.Module,
    other: nn.Module,
    role: str,
    pairs: list[tuple[str, str]],
    inputs: Tensor,
    labels: Tensor,
    label_matrix: Tensor,
    tokens: bool = False,
) -> list[tuple[str, Tensor]]:
    """Per layer pair: Grad-CAM of ``other`` and of the student, UniCAM distilled and residual
    (over pixels, or with ``tokens`` over a sentence's tokens)."""
    cam, uni, sep = (token_grad_cam, token_unicam, ": ") if tokens else (grad_cam, unicam, "\n")
    columns = []
    for s_layer, o_layer in pairs:
        name = s_layer if s_layer == o_layer else f"{s_layer}/{o_layer}"
        uc = uni(student, other, (s_layer, o_layer), inputs, labels, label_matrix)
        none = " (none)" if uc.empty else ""
        columns += [
            (f"{name}{sep}Grad-CAM {role}", cam(other, o_layer, inputs)),
            (f"{name}{sep}Grad-CAM student", cam(student, s_layer, inputs)),
            (f"{name}{sep}UniCAM distilled{none}", uc.distilled),
            (f"{name}{sep}UniCAM residual{none}", uc.residual),
        ]
    return columns


def _figure_batch(dataset: Dataset, num_images: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """``num_images`` examples taken round-robin over the classes in a seeded order."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]
    labels = torch.as_tensor(labels).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    per_class = [order[labels[order] == c] for c in labels.unique()]
    if len(per_class) < 2:
        raise ValueError("the split holds a single class; UniCAM needs at least 2")
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(num_images, len(labels)):
        chosen += [int(idx[depth]) for idx in per_class if depth < len(idx)]
        depth += 1
    images, batch_labels, indices = fetch(dataset, chosen[:num_images])
    return images, batch_labels, indices
