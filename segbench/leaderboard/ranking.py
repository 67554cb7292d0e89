"""Rankings across datasets: rank-then-aggregate, aggregate-then-rank, test-then-rank and their consensus.

Pure functions on tables with one row per dataset and one column per model (NaN where a model was not evaluated on a
dataset). A model missing from a dataset is ranked among the models present there, and its aggregates are taken over
the datasets it has (the leaderboard marks it). Every rank is 1 for the best, ties get the average of the ranks they
span (``scipy.stats.rankdata(method="average")``), so the ranks of ``k`` models always sum to ``k(k+1)/2``.

* rank-then-aggregate: rank the models within each dataset by their mean metric, then average each model's ranks.
* aggregate-then-rank: average each model's per-dataset mean metric over the datasets, then rank those averages.
* test-then-rank: count, per dataset, the models each one significantly beats (segbench's verdict rule), sum the
  counts over the datasets, then rank (more wins = better).
* consensus: the mean of the three rank vectors, ranked again (ties average).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

METHODS = ("rank_then_aggregate", "aggregate_then_rank", "test_then_rank")


def rank_values(values: pd.Series, *, higher_is_better: bool) -> pd.Series:
    """Ranks of ``values`` (1 = best, ties average); NaN values stay NaN and take no rank.

    Args:
        values: one number per model (index = model names).
        higher_is_better: orientation (Dice yes, HD95 no).

    Returns:
        A float Series with the index of ``values``.
    """
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    present = numeric.dropna()
    ranks = pd.Series(np.nan, index=values.index, dtype=float)
    if present.empty:
        return ranks
    key = -present.to_numpy() if higher_is_better else present.to_numpy()
    ranks[present.index] = scipy_stats.rankdata(key, method="average")
    return ranks


def rank_within_datasets(values: pd.DataFrame, *, higher_is_better: bool) -> pd.DataFrame:
    """Each dataset's ranks of its present models: the shape of ``values`` (datasets × models), NaN where absent."""
    return values.apply(lambda row: rank_values(row, higher_is_better=higher_is_better), axis=1)


def rank_then_aggregate(values: pd.DataFrame, *, higher_is_better: bool) -> pd.DataFrame:
    """Mean of each model's per-dataset ranks (over the datasets it has), and the rank of that mean.

    Returns:
        Index = models; columns ``mean_rank``, ``rank``.
    """
    mean_rank = rank_within_datasets(values, higher_is_better=higher_is_better).mean(axis=0, skipna=True)
    return pd.DataFrame({"mean_rank": mean_rank, "rank": rank_values(mean_rank, higher_is_better=False)})


def aggregate_then_rank(values: pd.DataFrame, *, higher_is_better: bool) -> pd.DataFrame:
    """Mean of each model's per-dataset metric (over the datasets it has), and the rank of that mean.

    Returns:
        Index = models; columns ``mean_value``, ``rank``.
    """
    mean_value = values.mean(axis=0, skipna=True)
    return pd.DataFrame({"mean_value": mean_value, "rank": rank_values(mean_value, higher_is_better=higher_is_better)})


def rank_by_wins(wins: pd.DataFrame) -> pd.DataFrame:
    """Sum over datasets of each model's significant wins, and the rank of that sum (more wins = better).

    Args:
        wins: datasets × models, the number of models each one beats on that dataset (NaN where it is absent).

    Returns:
        Index = models; columns ``wins``, ``rank``.
    """
    total = wins.sum(axis=0, min_count=1)
    return pd.DataFrame({"wins": total, "rank": rank_values(total, higher_is_better=True)})


def consensus(rank_vectors: list[pd.Series]) -> pd.DataFrame:
    """The consensus of several rankings: each model's mean rank over them, ranked again (ties average).

    Returns:
        Index = models (union of the vectors' indices); columns ``mean_of_ranks``, ``rank``.
    """
    mean = pd.concat(rank_vectors, axis=1).mean(axis=1, skipna=True)
    return pd.DataFrame({"mean_of_ranks": mean, "rank": rank_values(mean, higher_is_better=False)})


def all_rankings(values: pd.DataFrame, wins: pd.DataFrame, *, higher_is_better: bool) -> pd.DataFrame:
    """The three rankings and their consensus in one table, best consensus first.

    Args:
        values: datasets × models, each model's mean metric on each dataset (NaN where absent).
        wins: datasets × models, significant wins per dataset (see :func:`rank_by_wins`).
        higher_is_better: orientation of the metric.

    Returns:
        One row per model: ``model, datasets`` (how many it was evaluated on), ``mean_rank, rank_then_aggregate,
        mean_value, aggregate_then_rank, wins, test_then_rank, mean_of_ranks, consensus``; sorted by consensus, then
        rank-then-aggregate, then name.
    """
    rta = rank_then_aggregate(values, higher_is_better=higher_is_better)
    atr = aggregate_then_rank(values, higher_is_better=higher_is_better)
    ttr = rank_by_wins(wins.reindex(index=values.index, columns=values.columns))
    agreed = consensus([rta["rank"], atr["rank"], ttr["rank"]])
    table = pd.DataFrame({
        "model": values.columns, "datasets": values.notna().sum(axis=0).to_numpy(),
        "mean_rank": rta["mean_rank"].to_numpy(), "rank_then_aggregate": rta["rank"].to_numpy(),
        "mean_value": atr["mean_value"].to_numpy(), "aggregate_then_rank": atr["rank"].to_numpy(),
        "wins": ttr["wins"].to_numpy(), "test_then_rank": ttr["rank"].to_numpy(),
        "mean_of_ranks": agreed["mean_of_ranks"].to_numpy(), "consensus": agreed["rank"].to_numpy(),
    })  # fmt: skip
    order = table.sort_values(["consensus", "rank_then_aggregate", "model"], kind="stable", na_position="last")
    return order.reset_index(drop=True)
