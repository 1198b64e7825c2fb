"""Matplotlib figures for the analyses: grouped bars and lines with confidence intervals, a scatter
with a least-squares line, an annotated heatmap.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, nothing to close);
:class:`~kdscope.analysis.report.Figure` renders them to PNG. Error bars are the intervals of the
:class:`~kdscope.analysis.stats.Estimate` values given; a None estimate leaves a gap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from kdscope.analysis.stats import Estimate

Series = Mapping[str, Sequence[Estimate | None]]

_PANEL_W, _PANEL_H = 5.2, 3.6


def _figure(n_panels: int, title: str, width: float = _PANEL_W) -> tuple[Figure, list]:
    cols = min(n_panels, 3)
    rows = math.ceil(n_panels / cols)
    fig = Figure(
        figsize=(width * cols, _PANEL_H * rows + (0.4 if title else 0)), layout="constrained"
    )
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig, axes[:n_panels]


def _legend(fig: Figure, ax) -> None:
    """One legend for all panels, below them, so that it never covers data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), 4),
            frameon=False,
            fontsize=9,
        )


def _unpack(estimates: Sequence[Estimate | None]) -> tuple[np.ndarray, np.ndarray]:
    """Values and a 2 x n array of error-bar lengths (0 where the interval is undefined)."""
    values = np.array([e.value if e is not None else np.nan for e in estimates], dtype=float)
    err = np.zeros((2, len(estimates)))
    for i, e in enumerate(estimates):
        if e is not None and not math.isnan(e.low):
            err[:, i] = (e.value - e.low, e.high - e.value)
    return values, err


def grouped_bars(
    panels: Mapping[str, Series], groups: Sequence[str], ylabel: str, title: str = ""
) -> Figure:
    """One panel per key of ``panels``; along x the ``groups``, one bar per series with its CI."""
    fig, axes = _figure(len(panels), title, width=max(_PANEL_W, 0.9 * len(groups) + 2))
    for ax, (panel, series) in zip(axes, panels.items(), strict=True):
        width = 0.8 / max(len(series), 1)
        x = np.arange(len(groups))
        for k, (label, estimates) in enumerate(series.items()):
            values, err = _unpack(estimates)
            ax.bar(
                x + (k - (len(series) - 1) / 2) * width,
                values,
                width,
                yerr=err,
                capsize=3,
                label=label,
                color=f"C{k}",
            )
        ax.set_xticks(
            x,
            groups,
            rotation=20 if max(map(len, groups), default=0) > 12 else 0,
            ha="right" if max(map(len, groups), default=0) > 12 else "center",
        )
        ax.set_title(panel, fontsize=11)
        ax.set_ylabel(ylabel)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    _legend(fig, axes[0])
    return fig


def lines(
    panels: Mapping[str, Mapping[str, tuple[Sequence, Sequence[Estimate | None]]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    categories: Sequence[str] | None = None,
) -> Figure:
    """One panel per key; each series is (x values, estimates) drawn as a line with CI bars.

    With ``categories`` the x values are category names placed in that order (e.g. students by
    size); otherwise x is numeric. A dashed line marks y = 0 (no difference).
    """
    fig, axes = _figure(len(panels), title)
    for ax, (panel, series) in zip(axes, panels.items(), strict=True):
        for k, (label, (xs, estimates)) in enumerate(series.items()):
            pos = [categories.index(x) for x in xs] if categories is not None else list(xs)
            values, err = _unpack(estimates)
            ax.errorbar(pos, values, yerr=err, marker="o", capsize=3, label=label, color=f"C{k}")
        if categories is not None:
            ax.set_xticks(range(len(categories)), categories)
        ax.axhline(0, color="0.3", lw=0.8, ls="--")
        ax.set_title(panel, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return fig


def scatter(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Figure:
    """One panel per key; points per group (e.g. per method) and one least-squares line over all
    points of the panel."""
    fig, axes = _figure(len(panels), title)
    for ax, (panel, groups) in zip(axes, panels.items(), strict=True):
        all_x, all_y = [], []
        for k, (label, (xs, ys)) in enumerate(groups.items()):
            ax.scatter(xs, ys, s=22, label=label, color=f"C{k}", alpha=0.85)
            all_x += list(xs)
            all_y += list(ys)
        if len(set(all_x)) >= 2:
            slope, intercept = np.polyfit(all_x, all_y, 1)
            grid = np.linspace(min(all_x), max(all_x), 50)
            ax.plot(grid, slope * grid + intercept, color="0.3", lw=1, ls="--")
        ax.set_title(panel, fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return fig


def heatmap(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str = "",
    label: str = "",
) -> Figure:
    """Annotated heatmap of a rows x columns matrix, colours centred on 0 (blue < 0 < red)."""
    values = np.asarray(values, dtype=float)
    fig = Figure(
        figsize=(max(4.5, 1.3 * len(col_labels) + 2.5), max(2.5, 0.45 * len(row_labels) + 1.5)),
        layout="constrained",
    )
    ax = fig.subplots()
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound or -1, vmax=bound or 1, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=15, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(
                j,
                i,
                f"{v:.3g}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if abs(v) > 0.6 * bound else "black",
            )
    fig.colorbar(image, ax=ax, label=label)
    if title:
        ax.set_title(title, fontsize=11)
    return fig


def _series(history: Sequence[Mapping], key: str) -> tuple[list, np.ndarray]:
    values = [r.get(key) for r in history]
    return [r["epoch"] for r in history], np.array(
        [np.nan if v is None else v for v in values], dtype=float
    )


def retention_curves(histories: Mapping[str, Sequence[Mapping]], title: str = "") -> Figure:
    """Retention curves of ``train.probe`` runs (name -> metrics.jsonl records): agreement with
    the teacher on the probe examples it gets right (C, solid) and wrong (I, dashed), AOA, and
    CKA at each stage, per epoch. A rising I curve is the student taking on the teacher's
    mistakes."""
    fig, axes = _figure(3, title)
    agree_ax, aoa_ax, cka_ax = axes
    several = len(histories) > 1
    for k, (name, history) in enumerate(histories.items()):
        prefix = f"{name}: " if several else ""
        for key, split, style in (("probe_agree_C", "C", "-"), ("probe_agree_I", "I", "--")):
            epochs, values = _series(history, key)
            agree_ax.plot(epochs, values, style, marker="o", ms=3, color=f"C{k}",
                          label=f"{prefix}teacher {'correct' if split == 'C' else 'wrong'} "
                          f"({split})")  # fmt: skip
        epochs, values = _series(history, "probe_aoa")
        aoa_ax.plot(epochs, values, marker="o", ms=3, color=f"C{k}", label=name)
        layers = sorted({key for r in history for key in r if key.startswith("probe_cka/")})
        for j, key in enumerate(layers):
            epochs, values = _series(history, key)
            layer = key.removeprefix("probe_cka/")
            cka_ax.plot(epochs, values, marker="o", ms=3, color=f"C{k if several else j}",
                        ls=("-", "--", ":", "-.")[j % 4] if several else "-",
                        label=f"{prefix}{layer}")  # fmt: skip
    panels = (
        (agree_ax, "top-1 agreement with the teacher"),
        (aoa_ax, "AOA (output agreement)"),
        (cka_ax, "minibatch CKA with the teacher"),
    )
    for ax, label in panels:
        ax.set_title(label, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.get_legend_handles_labels()[0] and (ax is not aoa_ax or several):
            ax.legend(fontsize=8)
    return fig
