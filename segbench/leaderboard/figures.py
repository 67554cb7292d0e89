"""Leaderboard figures as PNG bytes: the rank-stability blob plot and the critical-difference diagram.

Drawn like the run report's figures (:mod:`segbench.report.figures`: a fresh Figure, fixed size and dpi, no PNG
metadata), so a leaderboard regenerated from the same runs gives identical files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from segbench.leaderboard.friedman import ALPHA, FriedmanResult
from segbench.report.figures import model_colors, mpl_text, new_figure, png_bytes, set_title

_MAX_DOT = 900.0  # marker area (points²) of a rank every draw gives


def _blob_panel(ax, frequencies: pd.DataFrame, summary: pd.DataFrame, models: Sequence[str], labels: Sequence[str],
                title: str) -> None:  # fmt: skip
    colors = model_colors(models)
    for x, model in enumerate(models):
        shares = frequencies[frequencies["model"] == model]
        if shares.empty:
            continue
        ax.scatter(np.full(len(shares), x), shares["rank"], s=_MAX_DOT * shares["share"].to_numpy(float),
                   color=colors[model], alpha=0.55, edgecolors="none", zorder=2)  # fmt: skip
        line = summary[summary["model"] == model].iloc[0]
        ax.vlines(x, line["low"], line["high"], color="black", linewidth=1.2, zorder=3)
        ax.scatter([x], [line["median"]], marker="_", s=260, color="black", linewidths=2.2, zorder=4)
    ax.set_xticks(range(len(models)), [mpl_text(label) for label in labels], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.grid(axis="y", color="#dddddd", zorder=0)
    set_title(ax, mpl_text(title), fontsize=10)


def blob_plot(
    frequencies: pd.DataFrame,
    summary: pd.DataFrame,
    *,
    panels: Sequence[str],
    models: Sequence[str],
    labels: Sequence[str] | None = None,
) -> bytes:
    """Each model's bootstrap rank distribution, one panel per dataset plus the across-dataset one.

    Dot area ∝ the share of draws giving the model that rank; the black dash is the median rank, the black line its
    95 % interval (2.5 and 97.5 % quantiles).

    Args:
        frequencies: :meth:`RankDraws.frequencies` (``dataset, model, rank, share``).
        summary: :meth:`RankDraws.summary` (``dataset, model, median, low, high``).
        panels: dataset names in panel order (the last one usually the across-dataset distribution).
        models: model order on the x axis (consensus order).
        labels: the models' tick labels (default their names; the leaderboard adds its dagger).
    """
    figure = new_figure(max(4.0, (0.45 * len(models) + 0.9) * len(panels)), 3.8)
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, panels, strict=True):
        _blob_panel(ax, frequencies[frequencies["dataset"] == name], summary[summary["dataset"] == name], models,
                    labels or models, name)  # fmt: skip
    axes[0].set_ylabel("rank (1 = best)")
    axes[0].set_ylim(len(models) + 0.6, 0.4)  # rank 1 at the top
    axes[0].set_yticks(range(1, len(models) + 1))
    return png_bytes(figure)


def cd_diagram(result: FriedmanResult) -> bytes:
    """The critical-difference diagram of scikit-posthocs: mean ranks on an axis, bars join models whose Nemenyi
    test does not separate them (p ≥ α)."""
    import scikit_posthocs

    figure = new_figure(7.5, max(2.4, 0.35 * len(result.models) + 1.2))
    figure.get_layout_engine().set(w_pad=0.25, h_pad=0.15)  # room for the outer labels
    ax = figure.add_subplot()
    ranks = pd.Series(result.mean_ranks.to_numpy(float), index=[mpl_text(m) for m in result.models])
    significance = result.nemenyi.copy()
    significance.index = significance.columns = list(ranks.index)
    # The library can draw the critical difference as a bar (cd=…), but over the tick labels: the caption gives it.
    scikit_posthocs.critical_difference_diagram(ranks, significance, ax=ax, alpha=ALPHA)
    return png_bytes(figure)
