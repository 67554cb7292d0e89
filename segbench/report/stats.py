"""Statistics for comparing models on the same out-of-fold cases.

Pure functions on numpy arrays / pandas tables; no I/O. Every random procedure takes a ``seed`` so a
report regenerated from the same run directory is byte-identical.

* :func:`bootstrap_ci` — percentile bootstrap confidence interval of a mean (cases resampled with
  replacement). Written here rather than calling :func:`scipy.stats.bootstrap` so that the same resampling
  scheme serves the paired differences and the rank stability, and so that degenerate inputs (one case,
  constant values) give a defined answer instead of a warning; tests check it against scipy.
* :func:`holm` — Holm–Bonferroni step-down adjustment of p-values.
* :func:`paired_comparison` — two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) on the
  per-case differences, plus the bootstrap CI of the mean difference.
* :func:`rank_stability` — share of case-bootstrap resamples in which each model ranks first.
* :func:`pareto_front` — which (cost, quality) points no other point dominates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

DEFAULT_RESAMPLES = 10_000
RANK_RESAMPLES = 2_000
ALPHA = 0.05


def bootstrap_ci(
    values: np.ndarray | pd.Series,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``.

    Args:
        values: 1-D sample (e.g. per-case Dice, or paired per-case differences); must be finite.
        confidence: two-sided confidence level in (0, 1).
        n_resamples: number of resamples (each of the same size as ``values``, drawn with replacement).
        seed: seed of :func:`numpy.random.default_rng`.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for an empty sample, ``(x, x)`` for a single value.

    Raises:
        ValueError: ``values`` is not 1-D, holds non-finite numbers, or ``confidence`` is outside (0, 1).
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"bootstrap_ci expects a 1-D sample, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci got non-finite values; replace misses by the stated penalty first")
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def holm(p_values: np.ndarray | list[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control, any dependence).

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i`` (``i`` from 0), a running maximum keeps
    the adjusted values in the order of the raw ones, and values are capped at 1. Rejecting where the adjusted
    value is below α is the Holm procedure at level α. NaN entries are left NaN and do not count in ``m``.

    Args:
        p_values: raw p-values, any order, shape ``(m,)``.

    Returns:
        Adjusted p-values in the input order, shape ``(m,)``.

    Raises:
        ValueError: a p-value outside [0, 1].
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[valid].tolist()}")
    index = np.flatnonzero(valid)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of ``other`` against ``reference`` on one metric.

    ``mean_diff`` and its CI are ``reference - other`` for higher-is-better metrics and ``other - reference``
    otherwise, so a positive value always means the reference is better. ``p_value`` is the raw Wilcoxon
    p-value; ``p_holm`` the Holm-adjusted one over the family the comparison belongs to (NaN until set).
    """

    metric: str
    unit: str
    reference: str
    other: str
    n_cases: int
    mean_diff: float
    ci_low: float
    ci_high: float
    statistic: float
    p_value: float
    p_holm: float = math.nan

    @property
    def significant(self) -> bool:
        p = self.p_holm if not math.isnan(self.p_holm) else self.p_value
        return bool(p < ALPHA)


def paired_comparison(
    reference: pd.Series,
    other: pd.Series,
    *,
    metric: str,
    reference_name: str,
    other_name: str,
    higher_is_better: bool,
    unit: str = "",
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Comparison:
    """Wilcoxon signed-rank test and bootstrap CI of the mean paired difference.

    Args:
        reference, other: per-case values indexed by case id; only ids present (and finite) in both are used.
        metric: metric name used in sentences (e.g. ``"Dice"``).
        reference_name, other_name: model names.
        higher_is_better: orientation of the metric (Dice yes, HD95 no).
        unit: unit shown after differences (``"mm"`` or ``""``).
        seed, n_resamples: bootstrap settings.

    Returns:
        A :class:`Comparison`; ``p_value`` is 1 when every paired difference is zero, NaN with no common case.
    """
    joined = pd.concat({"ref": reference, "other": other}, axis=1, join="inner").dropna()
    joined = joined[np.isfinite(joined["ref"]) & np.isfinite(joined["other"])]
    sign = 1.0 if higher_is_better else -1.0
    diff = sign * (joined["ref"].to_numpy(float) - joined["other"].to_numpy(float))
    n = int(diff.size)
    if n == 0:
        statistic, p_value = math.nan, math.nan
    elif np.all(diff == 0):
        # scipy cannot rank an all-zero sample; identical predictions are the textbook "no difference".
        statistic, p_value = 0.0, 1.0
    else:
        result = scipy_stats.wilcoxon(joined["ref"].to_numpy(float), joined["other"].to_numpy(float))
        statistic, p_value = float(result.statistic), float(result.pvalue)
    low, high = bootstrap_ci(diff, seed=seed, n_resamples=n_resamples) if n else (math.nan, math.nan)
    return Comparison(
        metric=metric,
        unit=unit,
        reference=reference_name,
        other=other_name,
        n_cases=n,
        mean_diff=float(diff.mean()) if n else math.nan,
        ci_low=low,
        ci_high=high,
        statistic=statistic,
        p_value=p_value,
    )


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """Return the comparisons with ``p_holm`` set, adjusting over the whole list as one family."""
    adjusted = holm([c.p_value for c in comparisons])
    return [replace(c, p_holm=float(p)) for c, p in zip(comparisons, adjusted, strict=True)]


def format_p(p: float) -> str:
    """``"p = 0.012"``, ``"p < 0.001"`` or ``"p = n/a"``."""
    if math.isnan(p):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def comparison_sentence(c: Comparison) -> str:
    """One plain sentence, e.g. ``"unet beats fcn by 0.061 Dice (95% CI 0.040–0.080, p = 0.002, 20 cases)"``.

    Uses the Holm-adjusted p-value when set. With ``p ≥ 0.05`` the sentence says "no significant difference".
    """
    digits = 3 if c.unit == "" else 2
    p = c.p_holm if not math.isnan(c.p_holm) else c.p_value
    unit = f" {c.unit}" if c.unit else ""
    cases = f"{c.n_cases} case" + ("" if c.n_cases == 1 else "s")
    if c.n_cases == 0:
        return f"{c.reference} and {c.other} share no case with a finite {c.metric}; no comparison possible."
    winner, loser = (c.reference, c.other) if c.mean_diff >= 0 else (c.other, c.reference)
    # Report the difference from the winner's side so that the number is positive.
    low, high = (c.ci_low, c.ci_high) if c.mean_diff >= 0 else (-c.ci_high, -c.ci_low)
    detail = f"95% CI {_interval(low, high, digits)}, {format_p(p)}, {cases}"
    if not p < ALPHA:
        return (
            f"No significant difference between {c.reference} and {c.other} in {c.metric} "
            f"({winner} better by {abs(c.mean_diff):.{digits}f}{unit}; {detail})."
        )
    return f"{winner} beats {loser} by {abs(c.mean_diff):.{digits}f}{unit} {c.metric} ({detail})."


def _interval(low: float, high: float, digits: int) -> str:
    # An en dash between two numbers reads as a range only when neither is negative.
    separator = "–" if low >= 0 else " to "
    return f"{low:.{digits}f}{separator}{high:.{digits}f}"


def rank_stability(
    wide: pd.DataFrame,
    *,
    higher_is_better: bool,
    n_resamples: int = RANK_RESAMPLES,
    seed: int = 0,
) -> pd.Series:
    """How often each model has the best mean over case-bootstrap resamples.

    Args:
        wide: one row per case, one column per model, finite values; rows with any NaN are dropped so every
            resample compares models on the same cases.
        higher_is_better: orientation of the metric.
        n_resamples, seed: bootstrap settings.

    Returns:
        Share in [0, 1] per model (index = column names, sums to 1; ties go to the first column in order).
        All NaN when no case is shared by every model.
    """
    complete = wide.dropna()
    models = list(wide.columns)
    if complete.empty or not models:
        return pd.Series(math.nan, index=models, dtype=float)
    values = complete.to_numpy(float)
    if not higher_is_better:
        values = -values
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_resamples, values.shape[0]))
    means = values[idx].mean(axis=1)  # (resamples, models)
    winners = np.argmax(means, axis=1)
    counts = np.bincount(winners, minlength=len(models))
    return pd.Series(counts / n_resamples, index=models, dtype=float)


def pareto_front(cost: np.ndarray, quality: np.ndarray, *, cost_higher_is_better: bool = False) -> np.ndarray:
    """Boolean mask of the points no other point dominates (quality is always higher-is-better).

    A point is dominated when another is at least as good on both axes and strictly better on one.
    NaN points are never on the front.

    Args:
        cost: shape ``(n,)``, e.g. peak memory (lower better) or throughput (pass ``cost_higher_is_better``).
        quality: shape ``(n,)``, e.g. mean Dice.
    """
    x = np.asarray(cost, dtype=float)
    y = np.asarray(quality, dtype=float)
    if cost_higher_is_better:
        x = -x
    on_front = np.zeros(x.shape, dtype=bool)
    for i in range(x.size):
        if np.isnan(x[i]) or np.isnan(y[i]):
            continue
        others = ~(np.isnan(x) | np.isnan(y))
        dominated = others & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        on_front[i] = not dominated.any()
    return on_front
