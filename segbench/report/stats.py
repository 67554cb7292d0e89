"""Statistics for comparing models on the same out-of-fold cases.

Pure functions on numpy arrays / pandas tables; no I/O. Every random procedure takes a ``seed`` so a
report regenerated from the same run directory is byte-identical.

* :func:`bootstrap_ci` — percentile bootstrap confidence interval of a mean (cases resampled with
  replacement). Written here rather than calling :func:`scipy.stats.bootstrap` so that the same resampling
  scheme serves the paired differences and the rank stability, and so that degenerate inputs (one case,
  constant values) give a defined answer instead of a warning; tests check it against scipy.
* :func:`holm` — Holm–Bonferroni step-down adjustment of p-values.
* :func:`paired_comparison` — two-sided Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`) on the
  per-case differences, plus the bootstrap CI of the mean difference and the direction the ranks favour.
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


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p-value an exact Wilcoxon signed-rank test on ``n`` non-zero differences can give."""
    return 1.0 if n <= 0 else min(1.0, 2.0 / 2.0**n)


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of ``other`` against ``reference`` on one metric.

    ``mean_diff`` and its CI are ``reference - other`` for higher-is-better metrics and ``other - reference``
    otherwise, so a positive value always means the reference is better. ``p_value`` is the raw case-level Wilcoxon
    p-value on ``n_cases - n_zero`` non-zero differences (each case's value is its mean over repeats); ``p_holm`` the
    Holm-adjusted one over the family the comparison belongs to (NaN until set). With ``repeats`` ≥ 2, ``job_p``
    is the Wilcoxon p-value over the ``job_units`` independently trained (fold, repeat) networks (mean difference of
    the fold's cases in that repeat), ``job_p_holm`` its Holm adjustment, and ``repeat_wins`` the number of repeats
    in which the model ahead on the cases also has the better mean. ``rank_direction`` is the sign of the signed-rank
    sum (W+ - W-): +1 when the ranks favour the reference, -1 the other, 0 a tie. ``verdict`` applies the rule (see
    :attr:`verdict`).
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
    n_zero: int = 0
    statistic_name: str = "mean"  # what mean_diff is a difference of, e.g. "penalised mean"
    cases_each: tuple[int, int] = (0, 0)  # cases of reference and other (before pairing); 0 = unknown
    repeats: int = 1
    job_units: int = 0
    job_mean_diff: float = math.nan
    job_p: float = math.nan
    job_p_holm: float = math.nan
    repeat_wins: int = 0
    rank_direction: int = 0

    @property
    def n_tested(self) -> int:
        """Differences the Wilcoxon test uses (scipy drops zero differences)."""
        return self.n_cases - self.n_zero

    @property
    def winner(self) -> str:
        return self.reference if self.mean_diff >= 0 else self.other

    @property
    def loser(self) -> str:
        return self.other if self.mean_diff >= 0 else self.reference

    @property
    def verdict(self) -> str:
        """The rule (docs/validity.md): one of ``beats``, ``no significant difference``, ``indistinguishable``,
        ``too few cases``, ``mixed evidence``, ``not consistent``, ``too few jobs``, ``no common case``.

        One repeat: ``beats`` when the Holm-corrected case-level test gives p < 0.05, the ranks favour the model the
        mean favours, and the bootstrap CI of the mean difference excludes 0. ``mixed evidence`` when the two
        disagree either way: a significant rank test with ranks against the mean or a CI that crosses 0, or a
        non-significant one beside a CI clear of 0 (a few cases carry the mean). Two or more repeats: additionally the
        Holm-corrected job-level test over the (fold, repeat) networks gives p < 0.05 with a difference in the same
        direction.
        """
        p = self.case_p
        if self.n_cases == 0:
            return "no common case"
        if self.n_tested == 0:
            return "indistinguishable"
        if min_attainable_p(self.n_tested) >= ALPHA:
            return "too few cases"
        if not p < ALPHA:
            # A mean CI clear of 0 beside a non-significant rank test would read as a contradiction too.
            return "mixed evidence" if self.ci_excludes_zero else "no significant difference"
        if self.mixed_evidence:
            return "mixed evidence"
        if self.repeats < 2:
            return "beats"
        if min_attainable_p(self.job_units) >= ALPHA:
            return "too few jobs"
        job_p = self.job_p_holm if not math.isnan(self.job_p_holm) else self.job_p
        same_direction = (self.job_mean_diff > 0) == (self.mean_diff > 0)
        return "beats" if job_p < ALPHA and same_direction else "not consistent"

    @property
    def case_p(self) -> float:
        """The case-level p-value the rule uses: Holm-adjusted once set, else raw."""
        return self.p_holm if not math.isnan(self.p_holm) else self.p_value

    @property
    def mean_direction(self) -> int:
        """+1 when the mean difference favours the reference (or is 0), -1 the other."""
        return 1 if self.mean_diff >= 0 else -1

    @property
    def ci_excludes_zero(self) -> bool:
        """Whether the CI of the mean difference lies wholly on the side of the model the mean favours."""
        return self.ci_low > 0 if self.mean_diff >= 0 else self.ci_high < 0

    @property
    def mixed_evidence(self) -> bool:
        """The rank test and the mean disagree: the ranks favour the other model, or the mean's CI includes 0."""
        return self.rank_direction != self.mean_direction or not self.ci_excludes_zero

    @property
    def significant(self) -> bool:
        return self.verdict == "beats"


def rank_direction(diff: np.ndarray) -> int:
    """Sign of W+ - W- of the signed-rank test on ``diff`` (zeros dropped, tied magnitudes get average ranks)."""
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return 0
    ranks = scipy_stats.rankdata(np.abs(nonzero))
    return int(np.sign(ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()))


def _wilcoxon(diff: np.ndarray) -> tuple[float, float]:
    """(statistic, two-sided p) of the signed-rank test; (0, 1) when every difference is zero, NaN when empty."""
    if diff.size == 0:
        return math.nan, math.nan
    if np.all(diff == 0):
        # scipy cannot rank an all-zero sample; identical predictions are the textbook "no difference".
        return 0.0, 1.0
    result = scipy_stats.wilcoxon(diff)
    return float(result.statistic), float(result.pvalue)


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
    statistic_name: str = "mean",
) -> Comparison:
    """Wilcoxon signed-rank test and bootstrap CI of the mean paired difference (one repeat).

    Args:
        reference, other: per-case values indexed by case id; only ids present (and finite) in both are used.
        metric: metric name used in sentences (e.g. ``"Dice"``).
        reference_name, other_name: model names.
        higher_is_better: orientation of the metric (Dice yes, HD95 no).
        unit: unit shown after differences (``"mm"`` or ``""``).
        seed, n_resamples: bootstrap settings.
        statistic_name: what the difference is a difference of (``"mean"``, ``"penalised mean"``).

    Returns:
        A :class:`Comparison`; ``p_value`` is 1 when every paired difference is zero, NaN with no common case.
    """
    long = pd.concat({"ref": reference, "other": other}, axis=1).rename_axis("case_id").reset_index()
    long = long.assign(fold=0, repeat=0)
    return repeated_comparison(long, metric=metric, reference_name=reference_name, other_name=other_name,
                               higher_is_better=higher_is_better, unit=unit, seed=seed, n_resamples=n_resamples,
                               statistic_name=statistic_name)  # fmt: skip


def repeated_comparison(
    long: pd.DataFrame,
    *,
    metric: str,
    reference_name: str,
    other_name: str,
    higher_is_better: bool,
    unit: str = "",
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    statistic_name: str = "mean",
) -> Comparison:
    """Case-level and job-level paired tests of two models over folds and repeats.

    Args:
        long: one row per (case_id, fold, repeat) with the two models' values in columns ``ref`` and ``other``
            (NaN where a model has no value); rows where either is missing or not finite are dropped, so both
            models are compared on exactly the same (case, repeat) evaluations.
        Others: as :func:`paired_comparison`.

    Returns:
        A :class:`Comparison`: the case-level test uses each case's mean over its paired repeats; with two or more
        repeats the job-level test uses each (fold, repeat)'s mean difference and ``repeat_wins`` counts the
        repeats whose mean difference favours the model ahead on the cases.
    """
    cases_each = (int(long.dropna(subset=["ref"])["case_id"].nunique()),
                  int(long.dropna(subset=["other"])["case_id"].nunique()))  # fmt: skip
    paired = long.dropna(subset=["ref", "other"])
    paired = paired[np.isfinite(paired["ref"].astype(float)) & np.isfinite(paired["other"].astype(float))]
    sign = 1.0 if higher_is_better else -1.0
    paired = paired.assign(diff=sign * (paired["ref"].astype(float) - paired["other"].astype(float)))
    diff = paired.groupby("case_id")["diff"].mean().to_numpy(float)
    statistic, p_value = _wilcoxon(diff)
    n = int(diff.size)
    mean_diff = float(diff.mean()) if n else math.nan
    low, high = bootstrap_ci(diff, seed=seed, n_resamples=n_resamples) if n else (math.nan, math.nan)
    repeats = int(paired["repeat"].nunique()) if n else 0
    units = paired.groupby(["fold", "repeat"])["diff"].mean().to_numpy(float)
    per_repeat = paired.groupby("repeat")["diff"].mean().to_numpy(float)
    ahead = 1.0 if mean_diff >= 0 else -1.0
    return Comparison(
        metric=metric, unit=unit, reference=reference_name, other=other_name, n_cases=n, mean_diff=mean_diff,
        ci_low=low, ci_high=high, statistic=statistic, p_value=p_value, n_zero=int(np.sum(diff == 0)),
        statistic_name=statistic_name, cases_each=cases_each, repeats=max(repeats, 1), job_units=int(units.size),
        job_mean_diff=float(units.mean()) if units.size else math.nan,
        job_p=_wilcoxon(units)[1] if repeats >= 2 else math.nan, repeat_wins=int(np.sum(ahead * per_repeat > 0)),
        rank_direction=rank_direction(diff),
    )  # fmt: skip


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """Return the comparisons with ``p_holm`` and ``job_p_holm`` set, adjusting over the whole list as one family."""
    adjusted = holm([c.p_value for c in comparisons])
    jobs = holm([c.job_p for c in comparisons])
    return [
        replace(c, p_holm=float(p), job_p_holm=float(q)) for c, p, q in zip(comparisons, adjusted, jobs, strict=True)
    ]


def format_p(p: float) -> str:
    """``"p = 0.012"``, ``"p < 0.001"`` or ``"p = n/a"``."""
    if math.isnan(p):
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}"


def p_cell(p: float) -> str:
    """A p-value for a table cell: four decimals, ``< 0.0001`` for tiny values (never ``0.0000``), ``–`` for NaN."""
    if math.isnan(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def comparison_sentence(c: Comparison) -> str:
    """One plain sentence per verdict (:attr:`Comparison.verdict`), e.g.
    ``"unet beats fcn by 0.061 Dice (difference of means; 95% CI 0.040–0.080, p = 0.002, 20 cases)."``

    The direction is always the winner's (the model ahead on the cases), as in the comparison table; the sentence
    names the statistic it compares, the cases the test used (zero differences separately), the common cases when
    the models were evaluated on different case sets, and with repeats the consistency check.
    """
    verdict = c.verdict
    if verdict == "no common case":
        return f"{c.reference} and {c.other} share no case with a finite {c.metric}; no comparison possible."
    if verdict == "indistinguishable":
        return (f"{c.reference} and {c.other} are indistinguishable in {c.metric}: identical on all {c.n_cases} "
                f"common cases{_over_repeats(c)}.")  # fmt: skip
    by = _by(c)
    detail = _detail(c)
    if verdict == "beats":
        return f"{c.winner} beats {c.loser} by {by} ({detail}{_consistency(c)})."
    if verdict == "too few cases":
        return (
            f"Too few paired cases to test {c.reference} against {c.other} in {c.metric}: {c.n_tested} non-zero "
            f"difference(s) can never reach p < {ALPHA:g} (6 are needed); {c.winner} ahead by {by} ({detail})."
        )
    if verdict == "mixed evidence":
        return f"No verdict between {c.reference} and {c.other} in {c.metric}: the rank test gives {format_p(c.case_p)}, {'but' if c.case_p < ALPHA else 'yet'} {_disagreement(c)}; {c.winner} ahead by {by} ({detail})."  # noqa: E501
    if verdict in ("not consistent", "too few jobs"):
        why = ("too few independently trained networks to check consistency across repeats (6 are needed)"
               if verdict == "too few jobs" else "not consistent across repeats")  # fmt: skip
        return f"No verdict between {c.reference} and {c.other} in {c.metric}: {c.winner} ahead by {by} on the cases ({detail}), but {why}{_consistency(c)}."  # noqa: E501
    return f"No significant difference between {c.reference} and {c.other} in {c.metric} ({c.winner} ahead by {by}; {detail})."  # noqa: E501


def _disagreement(c: Comparison) -> str:
    """Why the rank test and the mean disagree (:attr:`Comparison.verdict` ``mixed evidence``)."""
    if not c.case_p < ALPHA:
        return f"the 95% CI of the difference of {c.statistic_name}s excludes 0, so a few cases carry the difference"
    if c.rank_direction != c.mean_direction:
        ranked = c.reference if c.rank_direction > 0 else c.other
        return f"the ranks favour {ranked} while the {c.statistic_name} favours {c.winner}"
    return f"the 95% CI of the difference of {c.statistic_name}s includes 0"


def _by(c: Comparison) -> str:
    digits = 3 if c.unit == "" else 2
    unit = f" {c.unit}" if c.unit else ""
    return f"{abs(c.mean_diff):.{digits}f}{unit} {c.metric}"


def _detail(c: Comparison) -> str:
    digits = 3 if c.unit == "" else 2
    # Report the interval from the winner's side so that it matches the positive difference.
    low, high = (c.ci_low, c.ci_high) if c.mean_diff >= 0 else (-c.ci_high, -c.ci_low)
    p = c.case_p
    cases = f"{c.n_tested} case" + ("" if c.n_tested == 1 else "s")
    zeros = f" + {c.n_zero} with zero difference, not tested" if c.n_zero else ""
    common = ""
    if max(c.cases_each) > c.n_cases:  # evaluated on different case sets (a missing or failed fold)
        mine, theirs = c.cases_each
        common = f"; only the {c.n_cases} cases both have ({c.reference} has {mine}, {c.other} {theirs})"
    return (f"difference of {c.statistic_name}s{_over_repeats(c)}; 95% CI {_interval(low, high, digits)}, "
            f"{format_p(p)}, {cases}{zeros}{common}")  # fmt: skip


def _over_repeats(c: Comparison) -> str:
    return f" over {c.repeats} repeats" if c.repeats > 1 else ""


def _consistency(c: Comparison) -> str:
    if c.repeats < 2:
        return ""
    p = c.job_p_holm if not math.isnan(c.job_p_holm) else c.job_p
    return (f"; ahead in {c.repeat_wins} of {c.repeats} repeats, job-level {format_p(p)} over {c.job_units} "
            "trained networks")  # fmt: skip


def _interval(low: float, high: float, digits: int) -> str:
    # An en dash between two numbers reads as a range only when neither is negative.
    separator = "–" if low >= 0 else " to "
    return f"{low:.{digits}f}{separator}{high:.{digits}f}"


def repeat_interval(means: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of per-repeat means (repeats are independent trainings); NaN below 2 values."""
    x = np.asarray(means, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    half = float(scipy_stats.t.ppf((1 + confidence) / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return (float(x.mean()) - half, float(x.mean()) + half)


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
