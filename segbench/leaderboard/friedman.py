"""Friedman test and Nemenyi post-hoc test across datasets (Demšar 2006), from maintained libraries.

Datasets are the blocks, models the treatments, each model's mean metric on a dataset the observation. Only models
evaluated on every dataset enter (the test needs complete blocks); the others are listed as left out. The omnibus
test is :func:`scipy.stats.friedmanchisquare`, the all-pairs post-hoc test
:func:`scikit_posthocs.posthoc_nemenyi_friedman` and the critical-difference diagram
:func:`scikit_posthocs.critical_difference_diagram`.

Both tests rest on large-sample approximations (the Friedman statistic's chi-squared distribution, the studentized
range for Nemenyi). With few datasets their p-values are unreliable and the test has little power; the result then
carries the libraries' caveat (:data:`SMALL_SAMPLE_CAVEAT`), and below :data:`MIN_DATASETS` datasets or
:data:`MIN_MODELS` models it does not run at all (``reason`` says why).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from segbench.leaderboard.ranking import rank_within_datasets

log = logging.getLogger(__name__)

MIN_DATASETS = 3  # fewer blocks: no meaningful rank test at all
MIN_MODELS = 3  # scipy's Friedman test needs at least three treatments (with two, see the pairwise verdicts)
CAVEAT_BELOW = 5  # fewer datasets than this: the caveat is stated
ALPHA = 0.05
MISSING_LIBRARY = (
    "The Friedman test and Nemenyi diagram need scikit-posthocs, which is not installed: "
    "pip install 'segbench[leaderboard]' (or scikit-posthocs) and run `segbench leaderboard` again."
)
SMALL_SAMPLE_CAVEAT = (
    "Caveat (scipy.stats.friedmanchisquare): 'Due to the assumption that the test statistic has a chi squared "
    "distribution, the p-value is only reliable for n > 10 and more than 6 repeated samples' (n = datasets, repeated "
    "samples = models); the Nemenyi test of scikit-posthocs uses the studentized range's large-sample distribution in "
    "the same way, and autorank, another maintained ranking library, refuses fewer than five datasets ('requires at "
    "least five performance estimations'). With {n} datasets treat the test and the diagram as descriptive."
)


@dataclass(frozen=True)
class FriedmanResult:
    """The test across datasets; ``ran`` is False with ``reason`` when it could not run."""

    ran: bool
    reason: str = ""
    models: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # models missing from at least one dataset
    n_datasets: int = 0
    statistic: float = math.nan
    p_value: float = math.nan
    mean_ranks: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))  # 1 = best
    nemenyi: pd.DataFrame = field(default_factory=pd.DataFrame)  # models × models p-values
    critical_difference: float = math.nan
    caveat: str = ""


def critical_difference(n_models: int, n_datasets: int, alpha: float = ALPHA) -> float:
    """Nemenyi's critical difference of mean ranks: q_α(k, ∞)/√2 · √(k(k+1)/(6N)) (Demšar 2006, eq. 5)."""
    q = float(scipy_stats.studentized_range.ppf(1 - alpha, n_models, np.inf)) / math.sqrt(2)
    return q * math.sqrt(n_models * (n_models + 1) / (6.0 * n_datasets))


def _cannot_run(values: pd.DataFrame) -> str:
    complete = values.dropna(axis=1)
    if values.shape[0] < MIN_DATASETS:
        return (f"The Friedman test cannot run: it needs at least {MIN_DATASETS} datasets (blocks), the leaderboard "
                f"has {values.shape[0]}.")  # fmt: skip
    if complete.shape[1] < MIN_MODELS:
        return (f"The Friedman test cannot run: it needs at least {MIN_MODELS} models evaluated on every dataset "
                f"(scipy.stats.friedmanchisquare), the leaderboard has {complete.shape[1]}; the per-dataset verdicts "
                "and test-then-rank compare two models.")  # fmt: skip
    return ""


def friedman_nemenyi(values: pd.DataFrame, *, higher_is_better: bool) -> FriedmanResult:
    """Friedman test over datasets, Nemenyi p-values and mean ranks of the models evaluated on every dataset.

    Args:
        values: datasets × models mean metric (NaN where a model was not evaluated).
        higher_is_better: orientation of the metric (rank 1 = best).
    """
    left_out = tuple(str(m) for m in values.columns[values.isna().any(axis=0)])
    reason = _cannot_run(values)
    try:
        import scikit_posthocs
    except ImportError:
        reason = reason or MISSING_LIBRARY
    if reason:
        log.info(reason)
        return FriedmanResult(False, reason, left_out=left_out, n_datasets=int(values.shape[0]))
    complete = values.dropna(axis=1).astype(float)
    models = tuple(str(m) for m in complete.columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical blocks: scipy warns, the p-value says it
        statistic, p_value = scipy_stats.friedmanchisquare(*(complete[m].to_numpy() for m in models))
    oriented = complete if not higher_is_better else -complete  # the post-hoc test only uses rank differences
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(oriented.to_numpy())
    nemenyi.index, nemenyi.columns = list(models), list(models)
    n = int(complete.shape[0])
    caveat = SMALL_SAMPLE_CAVEAT.format(n=n) if n < CAVEAT_BELOW else ""
    if caveat:
        log.info(caveat)
    return FriedmanResult(True, "", models, left_out, n, float(statistic), float(p_value),
                          rank_within_datasets(complete, higher_is_better=higher_is_better).mean(axis=0),
                          nemenyi, critical_difference(len(models), n), caveat)  # fmt: skip
