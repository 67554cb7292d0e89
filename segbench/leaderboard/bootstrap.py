"""Rank stability: how the ranking moves when the cases of each dataset are resampled.

Per dataset, ``n_resamples`` bootstrap samples of its cases are drawn (with replacement); the cases are paired, so one
draw uses the same case indices for every model. On each draw every model's mean is recomputed over the cases it has
in the draw, and the models are ranked (1 = best, ties average). Across datasets, each draw's per-dataset ranks are
aggregated as the leaderboard's rank-then-aggregate does (mean rank over the datasets a model has, ranked again), so
the across-dataset distribution is the rank-then-aggregate ranking's own stability.

Seeded: dataset ``i`` (in the leaderboard's order, sorted by name) draws from ``numpy.random.default_rng([seed, i])``,
so the same runs give the same distributions whatever order they are passed in.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

DEFAULT_RESAMPLES = 1000
ACROSS = "all datasets"  # the dataset name of the across-dataset distribution in tables and CSV files


def rank_rows(values: np.ndarray, *, higher_is_better: bool) -> np.ndarray:
    """Ranks within each row of ``values`` (shape ``(draws, models)``; 1 = best, ties average, NaN stays NaN)."""
    key = -values if higher_is_better else values
    return scipy_stats.rankdata(key, axis=1, method="average", nan_policy="omit")


def case_bootstrap_ranks(
    wide: pd.DataFrame, *, higher_is_better: bool, n_resamples: int = DEFAULT_RESAMPLES, rng: np.random.Generator
) -> np.ndarray:
    """Ranks of the models on ``n_resamples`` paired case-bootstrap draws.

    Args:
        wide: one row per case, one column per model (NaN where a model has no value for the case).
        higher_is_better: orientation of the metric.
        rng: the generator of this dataset's draws.

    Returns:
        Shape ``(n_resamples, models)``; NaN where a model has no case in a draw.
    """
    values = wide.to_numpy(float)
    n_cases = values.shape[0]
    if n_cases == 0 or values.shape[1] == 0:
        return np.full((n_resamples, values.shape[1]), np.nan)
    index = rng.integers(0, n_cases, size=(n_resamples, n_cases))
    drawn = values[index]  # (draws, cases, models)
    counts = np.sum(~np.isnan(drawn), axis=1)
    sums = np.nansum(drawn, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return rank_rows(means, higher_is_better=higher_is_better)


def aggregate_draws(per_dataset: list[np.ndarray]) -> np.ndarray:
    """Rank-then-aggregate on every draw: mean rank over the datasets a model has, ranked again (1 = best).

    Args:
        per_dataset: one ``(draws, models)`` rank array per dataset, all over the same model columns.
    """
    stacked = np.stack(per_dataset)  # (datasets, draws, models)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a model without any rank in a draw stays unranked (NaN)
        mean_rank = np.nanmean(stacked, axis=0)
    return rank_rows(mean_rank, higher_is_better=False)


@dataclass(frozen=True)
class RankDraws:
    """Bootstrap ranks: dataset name (and :data:`ACROSS`) → ``(draws, models)`` array over ``models``."""

    models: tuple[str, ...]
    draws: dict[str, np.ndarray]
    n_resamples: int
    seed: int

    def summary(self) -> pd.DataFrame:
        """One row per (dataset, model) with a rank: ``median``, ``low``/``high`` (2.5 / 97.5 % quantiles),
        ``p_first`` (share of draws ranked first, ties at 1 count)."""
        rows = []
        for name, ranks in self.draws.items():
            for j, model in enumerate(self.models):
                column = ranks[:, j]
                column = column[~np.isnan(column)]
                if column.size == 0:
                    continue
                low, median, high = np.quantile(column, [0.025, 0.5, 0.975])
                rows.append({"dataset": name, "model": model, "median": median, "low": low, "high": high,
                             "p_first": float(np.mean(column <= 1.0))})  # fmt: skip
        return pd.DataFrame(rows, columns=["dataset", "model", "median", "low", "high", "p_first"])

    def frequencies(self) -> pd.DataFrame:
        """Tidy rank distribution: ``dataset, model, rank, share`` (share of the draws with that rank)."""
        rows = []
        for name, ranks in self.draws.items():
            for j, model in enumerate(self.models):
                column = ranks[:, j]
                column = column[~np.isnan(column)]
                values, counts = np.unique(column, return_counts=True)
                rows += [{"dataset": name, "model": model, "rank": float(v), "share": c / ranks.shape[0]}
                         for v, c in zip(values, counts, strict=True)]  # fmt: skip
        return pd.DataFrame(rows, columns=["dataset", "model", "rank", "share"])


def bootstrap_ranks(
    wides: dict[str, pd.DataFrame],
    models: list[str],
    *,
    higher_is_better: bool,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> RankDraws:
    """Per-dataset and across-dataset bootstrap rank distributions.

    Args:
        wides: dataset → cases × models table of penalised per-case values (the leaderboard's dataset order).
        models: every model of the leaderboard (columns of the result).
        higher_is_better, n_resamples, seed: as in the module docstring.
    """
    draws = {}
    for i, (name, wide) in enumerate(wides.items()):
        ranks = case_bootstrap_ranks(wide.reindex(columns=models), higher_is_better=higher_is_better,
                                     n_resamples=n_resamples, rng=np.random.default_rng([seed, i]))  # fmt: skip
        draws[name] = ranks
    if draws:
        draws[ACROSS] = aggregate_draws(list(draws.values()))
    return RankDraws(tuple(models), draws, n_resamples, seed)
