"""Figures for explanations: a grid of maps over the inputs (images or spectrograms), sentences
with their tokens highlighted by relevance, and a bar chart of FSS/RS per layer.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so no display is needed and
the user's pyplot backend and state are left alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported when a figure is drawn: it is slow to import
    from matplotlib.figure import Figure

MAP_CMAP = "jet"
MAP_ALPHA = 0.55


def plot_map_grid(
    images: Tensor,
    columns: Sequence[tuple[str, Tensor]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
    spectrogram: bool = False,
) -> Path:
    """Rows: images; first column the input, then one column per ``(title, maps)`` overlaid on it.

    Args:
        images: (N, C, H, W) images in [0, 1] (C = 1 or 3); with ``spectrogram``, (N, 1, mels,
            frames) log-mel spectrograms in any range, each min-max scaled and drawn with low
            frequencies at the bottom and time to the right (maps over time x frequency).
        columns: column titles and (N, H, W) maps in [0, 1].
        path: PNG to write (parent folders are created).
        row_labels: one label per image (e.g. its class), shown left of the row.
        title: figure title.
    """
    images = images.detach().float().cpu()
    if spectrogram:
        flat = images.flatten(1)
        low, high = flat.min(1).values, flat.max(1).values
        images = (images - low.view(-1, 1, 1, 1)) / (high - low).clamp_min(1e-12).view(-1, 1, 1, 1)
    images = images.clamp(0, 1)
    # A spectrogram's row 0 is its lowest mel band: drawn at the bottom, in a wide cell.
    show = {"origin": "lower", "aspect": "auto"} if spectrogram else {}
    n, cols = images.shape[0], 1 + len(columns)
    # Fixed margins in inches (constrained layout takes seconds on a grid of ~200 axes).
    cell, gap, left, right, top, bottom = 1.2, 0.06, 0.9, 1.1, 0.75 if title else 0.45, 0.1
    width = left + cols * cell + (cols - 1) * gap + right
    height = top + n * cell + (n - 1) * gap + bottom
    fig = _figure((width, height), constrained=False)
    axes = fig.subplots(
        n,
        cols,
        squeeze=False,
        gridspec_kw={
            "left": left / width,
            "right": 1 - right / width,
            "top": 1 - top / height,
            "bottom": bottom / height,
            "wspace": gap / cell,
            "hspace": gap / cell,
        },
    )
    for i in range(n):
        picture = _as_picture(images[i])
        grey = picture.mean(-1) if picture.ndim == 3 else picture
        axes[i, 0].imshow(picture, cmap="magma" if spectrogram else "gray", vmin=0, vmax=1, **show)
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=9, rotation=0, ha="right", va="center")
        for j, (_, maps) in enumerate(columns, start=1):
            # Maps over a grey copy of the input, so colour means relevance only.
            axes[i, j].imshow(grey, cmap="gray", vmin=0, vmax=1, **show)
            heat = maps[i].detach().float().cpu().numpy()
            axes[i, j].imshow(heat, cmap=MAP_CMAP, alpha=MAP_ALPHA, vmin=0, vmax=1, **show)
    for j, name in enumerate(["input", *[name for name, _ in columns]]):
        axes[0, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    bar_height = min(n * cell, 6.0)
    bar_axes = fig.add_axes(
        (
            1 - (right - 0.15) / width,
            (bottom + (n * cell + (n - 1) * gap - bar_height) / 2) / height,
            0.18 / width,
            bar_height / height,
        )
    )
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    scale = ScalarMappable(Normalize(0, 1), colormaps[MAP_CMAP])
    bar = fig.colorbar(scale, cax=bar_axes)
    bar.set_label("relevance (min-max per image)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.15 / height, va="top")
    return _save(fig, path)


def plot_token_relevance(
    sentences: Sequence[Sequence[str]],
    columns: Sequence[tuple[str, Tensor]],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Each sentence once per ``(title, maps)`` column, its tokens on a background coloured by
    their relevance (maps (N, T) in [0, 1], token t of sentence i at ``maps[i, t]``).

    Args:
        sentences: the tokens of each sentence (padding left out).
        columns: titles and (N, T) relevance maps.
        path: PNG to write.
        row_labels: one label per sentence (e.g. its class).
        title: figure title.
    """
    from matplotlib import colormaps

    cmap = colormaps[MAP_CMAP]
    lines = [(i, name, maps) for i in range(len(sentences)) for name, maps in columns]
    line_h, width = 0.24, 12.0
    fig = _figure((width, 0.6 + line_h * (len(lines) + len(sentences))), constrained=False)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    height = fig.get_figheight()
    y = height - 0.45
    if title:
        fig.text(0.01, 1 - 0.2 / height, title, fontsize=11, va="top")
    for k, (i, name, maps) in enumerate(lines):
        if k and lines[k - 1][0] != i:
            y -= line_h  # a blank line between sentences
        label = f"{row_labels[i]} | " if row_labels is not None and k % len(columns) == 0 else ""
        fig.text(0.01, y / height, f"{label}{name}", fontsize=7, va="center")
        x = 3.2
        weights = maps[i].detach().float().cpu().tolist()
        for t, token in enumerate(sentences[i]):
            step = 0.075 * len(token) + 0.08
            if x + step > width - 0.1:
                fig.text(x / width, y / height, "...", fontsize=7, va="center")
                break
            fig.text(
                x / width,
                y / height,
                token,
                fontsize=7,
                va="center",
                family="monospace",
                bbox={"facecolor": cmap(weights[t]), "alpha": MAP_ALPHA, "pad": 1, "lw": 0},
            )
            x += step
        y -= line_h
    return _save(fig, path)


def plot_relevance(
    relevance: dict, path: str | Path, title: str | None = None, other: str = "base"
) -> Path:
    """Bars per layer: RS of the base and the student for layer-specific (Grad-CAM) and unique
    (UniCAM) features, and FSS of both kinds; error bars: standard deviation over batches.

    Args:
        relevance: ``RelevanceResult.to_dict()``.
        path: PNG to write.
        title: figure title; the estimator is added below it.
        other: what the student is compared with (``"base"`` or ``"teacher"``), for the legends.
    """
    layers = list(relevance["layers"].values())
    names = [_layer_name(r) for r in layers]
    rs_bars = [
        (f"{other}, layer-specific", "gradcam", "rs_base", "#9ecae1"),
        ("student, layer-specific", "gradcam", "rs_student", "#fdae6b"),
        (f"{other}, residual (unique)", "unicam", "rs_residual", "#3182bd"),
        ("student, distilled (unique)", "unicam", "rs_distilled", "#e6550d"),
    ]
    fss_bars = [
        ("layer-specific (Grad-CAM)", "gradcam", "fss", "#a1d99b"),
        ("unique (UniCAM)", "unicam", "fss", "#31a354"),
    ]
    fig = _figure((4.5 + 1.6 * len(layers), 4.2))
    ax_rs, ax_fss = fig.subplots(1, 2, width_ratios=[2, 1.3])
    _bars(ax_rs, layers, names, rs_bars, "RS: dCor with label embeddings")
    _bars(ax_fss, layers, names, fss_bars, f"FSS: dCor student vs {other}")
    subtitle = f"{relevance['estimator']}; {relevance['batches_used']} batches"
    fig.suptitle(f"{title}\n{subtitle}" if title else subtitle, fontsize=10)
    return _save(fig, path)


def _bars(ax, layers: list[dict], names: list[str], bars: list[tuple], ylabel: str) -> None:
    x = np.arange(len(layers))
    width = 0.8 / len(bars)
    for k, (label, kind, key, colour) in enumerate(bars):
        means = [_value(r[kind][key]["mean"]) for r in layers]
        stds = [_value(r[kind][key]["std"]) for r in layers]
        ax.bar(
            x + (k - (len(bars) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            label=label,
            color=colour,
            capsize=2,
        )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    # Below the axes, where it cannot hide a bar.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)


def _value(v: float | None) -> float:
    return float("nan") if v is None else v


def _layer_name(result: dict) -> str:
    s, b = result["student_layer"], result["base_layer"]
    return s if s == b else f"S {s}\nB {b}"


def _as_picture(image: Tensor) -> np.ndarray:
    array = image.numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _figure(size: tuple[float, float], constrained: bool = True) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
