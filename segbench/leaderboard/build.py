"""One leaderboard from several runs: the per-dataset values, the rankings, their stability, the Friedman test and
the comparability of the runs, computed once and then rendered (:mod:`segbench.leaderboard.page`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from segbench.leaderboard.bootstrap import DEFAULT_RESAMPLES, RankDraws, bootstrap_ranks
from segbench.leaderboard.comparability import Comparability, comparability
from segbench.leaderboard.friedman import FriedmanResult, friedman_nemenyi
from segbench.leaderboard.ranking import all_rankings, rank_within_datasets
from segbench.leaderboard.runs import DatasetRun, read_dataset_runs
from segbench.leaderboard.scores import resolve_metric, values_table, wins_table
from segbench.metrics import Metric
from segbench.report.stats import Comparison

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leaderboard:
    """Everything a leaderboard shows.

    ``values`` and ``wins`` are datasets × models (NaN where a model was not evaluated); ``rankings`` is
    :func:`segbench.leaderboard.ranking.all_rankings`' table (consensus order); ``models`` every model in that order;
    ``missing`` model → the datasets it lacks (only models that lack one).
    """

    metric: Metric
    runs: tuple[DatasetRun, ...]
    values: pd.DataFrame
    wins: pd.DataFrame
    pairwise: dict[str, list[Comparison]]
    rankings: pd.DataFrame
    draws: RankDraws
    friedman: FriedmanResult
    comparability: Comparability
    models: tuple[str, ...]
    missing: dict[str, tuple[str, ...]]
    home: Path | None = None  # the output folder: pages and CSV files name the runs relative to it

    def place(self, run: DatasetRun) -> str:
        """Where ``run`` is, as the page names it: relative to :attr:`home` when set (a page can move with its
        runs, and a committed one shows no machine's folders), else as given."""
        if self.home is None:
            return str(run.run_dir)
        return Path(os.path.relpath(Path(run.run_dir).resolve(), Path(self.home).resolve())).as_posix()

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(run.dataset for run in self.runs)

    @property
    def dataset_ranks(self) -> pd.DataFrame:
        """Datasets × models: each model's rank among the models present on the dataset (1 = best, ties average)."""
        return rank_within_datasets(self.values, higher_is_better=self.metric.higher_is_better)


def _all_models(runs: list[DatasetRun]) -> list[str]:
    """Every model of any run, in order of first appearance (runs sorted by dataset, each in its report's order)."""
    return list(dict.fromkeys(m for run in runs for m in run.models))


def _wide(run: DatasetRun, metric: Metric) -> pd.DataFrame:
    """Cases × models of ``metric``'s penalised per-case values (repeats and folds averaged per case)."""
    per_case = run.per_case
    if per_case.empty or metric.penalised_column not in per_case:
        return pd.DataFrame(columns=list(run.models))
    values = per_case.assign(value=pd.to_numeric(per_case[metric.penalised_column], errors="coerce"))
    return values.pivot_table(index="case_id", columns="model", values="value", aggfunc="mean")


def build_leaderboard(
    run_dirs: list[str | Path], *, metric: str = "dice", seed: int = 0, n_resamples: int = DEFAULT_RESAMPLES
) -> Leaderboard:
    """Read the runs and compute every ranking of the leaderboard.

    Args:
        run_dirs: one run directory per dataset (finished or partial).
        metric: catalogue metric the rankings use (``dice``, ``hd95``, ``nsd``, ``assd`` …).
        seed: seed of every bootstrap (the runs' confidence intervals and the rank stability).
        n_resamples: case-bootstrap draws per dataset for the rank stability.

    Raises:
        ConfigError: an unknown metric, no run, a folder given twice or two runs of one dataset.
        RunDirectoryError: a folder without a readable manifest.json.
    """
    chosen = resolve_metric(metric)
    runs = read_dataset_runs(run_dirs, seed=seed)
    models = _all_models(runs)
    values = values_table(runs, chosen, models)
    wins, pairwise = wins_table(runs, chosen, models, seed=seed)
    rankings = all_rankings(values, wins, higher_is_better=chosen.higher_is_better)
    ordered = tuple(rankings["model"])
    draws = bootstrap_ranks({run.dataset: _wide(run, chosen) for run in runs}, list(ordered),
                            higher_is_better=chosen.higher_is_better, n_resamples=n_resamples, seed=seed)  # fmt: skip
    missing = {m: tuple(values.index[values[m].isna()]) for m in ordered if values[m].isna().any()}
    log.info("leaderboard of %d datasets and %d models by %s", len(runs), len(ordered), chosen.name)
    return Leaderboard(chosen, tuple(runs), values, wins, pairwise, rankings, draws,
                       friedman_nemenyi(values, higher_is_better=chosen.higher_is_better), comparability(runs),
                       ordered, missing)  # fmt: skip
