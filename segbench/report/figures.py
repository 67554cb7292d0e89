"""Report figures as PNG bytes (matplotlib's object API + seaborn, no pyplot state).

Every function draws on a fresh :class:`matplotlib.figure.Figure` with a fixed size and dpi and returns
the PNG bytes. Output is deterministic: the strip-plot jitter runs under a fixed seed and the PNG carries
no "Software" or date metadata, so regenerating a report gives identical files.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

DPI = 100
_PNG_METADATA = {"Software": None}  # matplotlib writes its version here otherwise


def new_figure(width: float, height: float):
    """A fresh matplotlib Figure (no pyplot state) of ``width`` × ``height`` inches at :data:`DPI`, laid out."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png_bytes(figure) -> bytes:
    """``figure`` as PNG bytes without metadata (identical bytes for identical figures)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()


def set_title(ax, text: str, *, fontsize: float | None = None) -> None:
    """``ax.set_title`` wrapped to the figure's width, so a long title (model names, labels) is never clipped."""
    import textwrap

    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties

    size = FontProperties(size=fontsize or rcParams["axes.titlesize"]).get_size_in_points()
    width_px = ax.figure.get_figwidth() * ax.figure.dpi
    # An average glyph of a sans-serif font is about 0.6 em wide; the margin keeps wrapped lines inside the figure.
    chars = max(12, int(0.9 * width_px / (0.6 * size * ax.figure.dpi / 72)))
    ax.set_title(textwrap.fill(text, width=chars), fontsize=size)


def mpl_text(text: object) -> str:
    """User text safe for matplotlib: a ``$`` would otherwise start mathtext (and can fail to parse)."""
    return str(text).replace("$", r"\$")


def model_colors(models: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A fixed colour per model, in the given order (seaborn's colour-blind palette, cycled)."""
    import seaborn as sns

    palette = sns.color_palette("colorblind", n_colors=max(len(models), 1))
    return {model: tuple(palette[i % len(palette)]) for i, model in enumerate(models)}


def box_strip(per_case: pd.DataFrame, *, column: str, label: str, models: Sequence[str]) -> bytes:
    """Box plot with every case as a dot, one box per model.

    Args:
        per_case: per-case table (``model`` and ``column``; finite values are plotted).
        column: value column, e.g. ``"dice"`` or ``"hd95_pen"``.
        label: y-axis label.
        models: model order on the x axis.
    """
    import seaborn as sns

    data = per_case[["model", column]].copy()
    data = data[np.isfinite(pd.to_numeric(data[column], errors="coerce").astype(float))]
    order = [m for m in models if m in set(data["model"])]
    figure = new_figure(max(4.0, 1.2 * len(order) + 2), 4.0)
    ax = figure.add_subplot()
    if order:
        colors = model_colors(models)
        palette = {m: colors[m] for m in order}
        with warnings.catch_warnings():
            # seaborn 0.13 passes matplotlib's deprecated `vert` to boxplot; nothing a caller can act on.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            sns.boxplot(data=data, x="model", y=column, hue="model", order=order, hue_order=order, palette=palette,
                        ax=ax, showfliers=False, legend=False, boxprops={"alpha": 0.5})  # fmt: skip
        # seaborn jitters with numpy's global generator: seed it and restore the caller's state afterwards.
        state = np.random.get_state()
        try:
            np.random.seed(0)
            sns.stripplot(data=data, x="model", y=column, order=order, color="black", size=3, jitter=0.2, ax=ax)
        finally:
            np.random.set_state(state)
        ax.set_xticks(range(len(order)), [mpl_text(m) for m in order])
    else:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("")
    ax.set_ylabel(label)
    set_title(ax, f"{label} per case")
    return png_bytes(figure)


def pareto(
    board: pd.DataFrame,
    *,
    cost_column: str,
    cost_label: str,
    front: np.ndarray,
    models: Sequence[str],
) -> bytes:
    """Mean Dice against a cost (peak memory, throughput), the Pareto front joined by a dashed line.

    Args:
        board: leaderboard (``model``, ``dice_mean``, ``cost_column``).
        cost_column, cost_label: x values and axis label.
        front: boolean mask over ``board`` rows (see :func:`segbench.report.stats.pareto_front`).
        models: model order for colours.
    """
    figure = new_figure(5.0, 4.0)
    ax = figure.add_subplot()
    colors = model_colors(models)
    x = pd.to_numeric(board[cost_column], errors="coerce").to_numpy(float)
    y = pd.to_numeric(board["dice_mean"], errors="coerce").to_numpy(float)
    plotted = False
    for i, model in enumerate(board["model"]):
        if math.isnan(x[i]) or math.isnan(y[i]):
            continue
        plotted = True
        ax.scatter([x[i]], [y[i]], s=60, color=colors.get(model, (0.3, 0.3, 0.3)), label=mpl_text(model),
                   edgecolors="black" if front[i] else "none", linewidths=1.5, zorder=3)  # fmt: skip
        ax.annotate(mpl_text(model), (x[i], y[i]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    on_front = np.flatnonzero(front)
    if on_front.size > 1:
        ordered = on_front[np.argsort(x[on_front], kind="stable")]
        ax.plot(x[ordered], y[ordered], "--", color="gray", zorder=2, label="Pareto front")
    if not plotted:
        ax.text(0.5, 0.5, "no cost measurements", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8, loc="best")
    ax.margins(0.15)  # room for the name labels at the extremes
    ax.set_xlabel(cost_label)
    ax.set_ylabel("mean Dice")
    set_title(ax, f"Dice vs {cost_label} (front: black edge)")
    return png_bytes(figure)


def learning_curves(curves: pd.DataFrame, *, models: Sequence[str]) -> bytes:
    """Training loss against iteration: mean over folds per model, with a ±1 sd band across folds.

    Args:
        curves: ``model, fold, iteration, loss`` rows (``segbench.results.load_learning_curves``).
        models: model order for colours.
    """
    figure = new_figure(6.0, 4.0)
    ax = figure.add_subplot()
    colors = model_colors(models)
    data = curves.copy()
    data["loss"] = pd.to_numeric(data["loss"], errors="coerce")
    data = data[np.isfinite(data["loss"].astype(float))]
    for model in [m for m in models if m in set(data["model"])]:
        rows = data[data["model"] == model]
        n_folds = rows["fold"].nunique()
        grouped = rows.groupby("iteration")["loss"]
        mean, sd = grouped.mean(), grouped.std(ddof=0).fillna(0.0)
        ax.plot(mean.index, mean.to_numpy(), color=colors[model], label=f"{mpl_text(model)} ({n_folds} folds)")
        ax.fill_between(mean.index, (mean - sd).to_numpy(), (mean + sd).to_numpy(), color=colors[model], alpha=0.2)
    if data.empty:
        ax.text(0.5, 0.5, "no training logs", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    set_title(ax, "Learning curves (mean over folds ± sd)")
    return png_bytes(figure)


def slice_axis(spacing: Sequence[float]) -> int:
    """Axis to slice along: the one with the coarsest spacing (the acquisition direction), last on ties."""
    spacing = [float(s) for s in spacing]
    coarsest = max(spacing)
    return max(i for i, s in enumerate(spacing) if s == coarsest)


def middle_slice(reference: np.ndarray, axis: int) -> int:
    """Index halfway through the reference foreground along ``axis`` (the volume middle if it is empty)."""
    other_axes = tuple(a for a in range(reference.ndim) if a != axis)
    present = np.flatnonzero(np.any(reference > 0, axis=other_axes))
    if present.size == 0:
        return reference.shape[axis] // 2
    return int((present[0] + present[-1]) // 2)


def qualitative_panel(
    image: np.ndarray,
    reference: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    *,
    spacing: Sequence[float],
    title: str,
    models: Sequence[str],
) -> bytes:
    """One slice of the image with the reference contour and each model's predicted contour.

    Args:
        image: ``(D, H, W)`` intensities (first channel of the image).
        reference: ``(D, H, W)`` label map; foreground = any label > 0.
        predictions: model name → ``(D, H, W)`` predicted label map (same shape as ``reference``).
        spacing: voxel size in mm, array-axis order (sets the slice axis and the aspect ratio).
        title: panel title (e.g. the case id and why it was chosen).
        models: model order for colours.

    Raises:
        ValueError: a prediction's shape differs from the reference's.
    """
    from matplotlib.lines import Line2D

    for model, prediction in predictions.items():
        if prediction.shape != reference.shape:
            raise ValueError(f"prediction of {model} has shape {prediction.shape}, reference {reference.shape}")
    axis = slice_axis(spacing)
    index = middle_slice(reference, axis)
    kept = [a for a in range(3) if a != axis]

    def cut(volume: np.ndarray) -> np.ndarray:
        # Transposed so the first kept axis runs left-right, origin at the bottom.
        return np.take(volume, index, axis=axis).T

    figure = new_figure(6.0, 6.0)
    ax = figure.add_subplot()
    aspect = float(spacing[kept[1]]) / float(spacing[kept[0]])
    ax.imshow(cut(image), cmap="gray", origin="lower", aspect=aspect, interpolation="nearest")
    colors = model_colors(models)
    handles = []
    for name, mask, color, style in [("reference", reference, (1.0, 1.0, 1.0), "-")] + [
        (m, predictions[m], colors.get(m, (1.0, 0.0, 0.0)), "--") for m in models if m in predictions
    ]:
        plane = (cut(mask) > 0).astype(float)
        if plane.any():
            ax.contour(plane, levels=[0.5], colors=[color], linewidths=1.5, linestyles=style)
        suffix = "" if plane.any() else " (empty on this slice)"
        handles.append(Line2D([0], [0], color=color, linestyle=style, label=f"{mpl_text(name)}{suffix}"))
    ax.legend(handles=handles, fontsize=8, loc="upper right", facecolor=(0.2, 0.2, 0.2), labelcolor="white")
    set_title(ax, f"{mpl_text(title)} — axis {axis}, slice {index}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return png_bytes(figure)
