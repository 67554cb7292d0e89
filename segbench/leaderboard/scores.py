"""What the rankings are computed from: each model's mean metric per dataset and its significant wins per dataset.

Values are the report's pooled per-case values (misses counted as the metric's stated penalty, repeats averaged);
wins come from every pair of models compared with the report's tests and verdict rule
(:func:`segbench.report.compare_all_pairs`, Holm over all pairs of the dataset).
"""

from __future__ import annotations

import pandas as pd

from segbench.errors import ConfigError
from segbench.leaderboard.runs import DatasetRun
from segbench.metrics import Metric, get_metric, metric_names
from segbench.report import compare_all_pairs
from segbench.report.stats import Comparison


def resolve_metric(name: str) -> Metric:
    """The catalogue metric ``name`` (``dice``, ``hd95``, ``nsd``, ``assd`` …).

    Raises:
        ConfigError: an unknown name (the message lists the registered ones).
    """
    try:
        return get_metric(name)
    except KeyError:
        choices = ", ".join(metric_names())
        raise ConfigError(f"--metric {name!r} is not a segbench metric; choose one of {choices}") from None


def model_means(run: DatasetRun, metric: Metric) -> pd.Series:
    """Each evaluated model's mean of ``metric`` over its cases (penalised values), in the run's model order."""
    per_case = run.per_case
    if per_case.empty or metric.penalised_column not in per_case:
        return pd.Series(dtype=float)
    values = pd.to_numeric(per_case[metric.penalised_column], errors="coerce")
    means = values.groupby(per_case["model"]).mean().dropna()
    return means.reindex([m for m in run.models if m in means.index])


def values_table(runs: list[DatasetRun], metric: Metric, models: list[str]) -> pd.DataFrame:
    """Datasets × models: each model's mean ``metric`` per dataset (NaN where a model was not evaluated)."""
    rows = {run.dataset: model_means(run, metric) for run in runs}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(index=[r.dataset for r in runs], columns=models)


def pairwise_wins(run: DatasetRun, metric: Metric, *, seed: int = 0) -> tuple[pd.Series, list[Comparison]]:
    """How many models each model beats on ``run``'s dataset, and the comparisons the count comes from.

    Returns:
        (wins per model with a mean of ``metric``, the Holm-corrected pairwise comparisons).
    """
    models = list(model_means(run, metric).index)
    comparisons = compare_all_pairs(run.context.per_repeat, models, metric, seed) if len(models) > 1 else []
    wins = pd.Series(0, index=models, dtype=float)
    for comparison in comparisons:
        if comparison.significant:
            wins[comparison.winner] += 1
    return wins, comparisons


def wins_table(runs: list[DatasetRun], metric: Metric, models: list[str], *, seed: int = 0):
    """(datasets × models significant wins, dataset → its pairwise comparisons)."""
    found = {run.dataset: pairwise_wins(run, metric, seed=seed) for run in runs}
    wins = pd.DataFrame.from_dict({name: w for name, (w, _) in found.items()}, orient="index")
    wins = wins.reindex(index=[r.dataset for r in runs], columns=models)
    return wins, {name: comparisons for name, (_, comparisons) in found.items()}
