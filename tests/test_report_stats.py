"""Statistics of the report: Holm, bootstrap CIs, paired Wilcoxon, rank stability, Pareto front, sentences."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from segbench.report import stats


def test_holm_known_values():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max keeps 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_nan_out_of_the_family():
    adjusted = stats.holm([0.6, math.nan, 0.2])  # m = 2: 0.2 * 2 = 0.4, then 0.6 * 1 = 0.6
    np.testing.assert_allclose(adjusted[[0, 2]], [0.6, 0.4])
    assert math.isnan(adjusted[1])
    np.testing.assert_allclose(stats.holm([0.6, 0.7, 0.9]), [1.0, 1.0, 1.0])


def test_holm_single_p_value_is_unchanged_and_rejects_out_of_range():
    assert stats.holm([0.03])[0] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="p-values"):
        stats.holm([0.5, 1.5])


def _holm_rejections(p: list[float], alpha: float) -> set[int]:
    # The textbook step-down procedure, written independently of stats.holm.
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for k, i in enumerate(order):
        if p[i] > alpha / (len(p) - k):
            break
        rejected.add(i)
    return rejected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8), st.sampled_from([0.01, 0.05, 0.1]))
def test_holm_adjusted_values_reproduce_the_step_down_procedure(p, alpha):
    adjusted = stats.holm(p)
    assert {i for i, a in enumerate(adjusted) if a <= alpha} == _holm_rejections(p, alpha)
    assert np.all(adjusted >= np.asarray(p) - 1e-12)


def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap():
    values = np.random.default_rng(3).normal(0.8, 0.05, 20)
    low, high = stats.bootstrap_ci(values, seed=0)
    reference = scipy_stats.bootstrap(
        (values,), np.mean, method="percentile", n_resamples=20_000, random_state=np.random.default_rng(1)
    ).confidence_interval
    assert low < values.mean() < high
    assert low == pytest.approx(reference.low, abs=0.004)
    assert high == pytest.approx(reference.high, abs=0.004)
    assert stats.bootstrap_ci(values, seed=0) == (low, high)  # seeded: identical on regeneration


def test_bootstrap_ci_degenerate_inputs():
    assert stats.bootstrap_ci(np.array([0.7])) == (0.7, 0.7)
    assert all(math.isnan(v) for v in stats.bootstrap_ci(np.array([])))
    with pytest.raises(ValueError, match="non-finite"):
        stats.bootstrap_ci(np.array([1.0, math.inf]))


def _series(values: dict[str, float]) -> pd.Series:
    return pd.Series(values, dtype=float)


def test_paired_comparison_matches_scipy_wilcoxon_on_shared_cases_only():
    rng = np.random.default_rng(0)
    cases = [f"c{i:02d}" for i in range(15)]
    best = _series(dict(zip(cases, rng.uniform(0.75, 0.9, 15), strict=True)))
    other = best - 0.05 + rng.normal(0, 0.02, 15)
    other = other.drop(["c00", "c01"])  # other model lacks two cases (a failed fold)
    other["extra"] = 0.1  # and has a case the best model lacks
    c = stats.paired_comparison(best, other, metric="Dice", reference_name="unet", other_name="fcn",
                                higher_is_better=True)  # fmt: skip
    shared = best.index.intersection(other.index)
    direct = scipy_stats.wilcoxon(best[shared], other[shared])
    assert c.n_cases == 13
    assert c.p_value == pytest.approx(direct.pvalue)
    assert c.statistic == pytest.approx(direct.statistic)
    assert c.mean_diff == pytest.approx((best[shared] - other[shared]).mean())
    assert c.ci_low < c.mean_diff < c.ci_high


def test_paired_comparison_orients_lower_is_better_metrics():
    best = _series({"a": 2.0, "b": 3.0, "c": 2.5, "d": 4.0, "e": 1.0, "f": 2.2})
    other = best + np.array([1.0, 2.0, 1.5, 0.5, 3.0, 2.5])
    c = stats.paired_comparison(best, other, metric="HD95", reference_name="unet", other_name="fcn",
                                higher_is_better=False, unit="mm")  # fmt: skip
    assert c.mean_diff == pytest.approx(1.75)  # positive: the reference (lower distance) is better
    assert c.p_value == pytest.approx(scipy_stats.wilcoxon(best, other).pvalue)


def test_identical_predictions_give_p_one():
    values = _series({"a": 0.8, "b": 0.7, "c": 0.9})
    c = stats.paired_comparison(values, values.copy(), metric="Dice", reference_name="x", other_name="y",
                                higher_is_better=True)  # fmt: skip
    assert c.p_value == 1.0 and c.mean_diff == 0.0 and not c.significant


def test_sentences_significant_and_not():
    c = stats.Comparison("Dice", "", "unet", "fcn", 20, 0.061, 0.04, 0.08, 10.0, 0.001, p_holm=0.002, rank_direction=1)
    assert stats.comparison_sentence(c) == (
        "unet beats fcn by 0.061 Dice (difference of means; 95% CI 0.040–0.080, p = 0.002, 20 cases)."
    )
    c = stats.Comparison("HD95", "mm", "unet", "fcn", 12, -1.5, -3.0, 0.2, 20.0, 0.2, p_holm=0.4)
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith("No significant difference between unet and fcn in HD95")
    assert "fcn ahead by 1.50 mm" in sentence and "p = 0.400" in sentence and "-0.20 to 3.00" in sentence
    # significant in favour of the other model (best by Dice, worse by HD95)
    c = stats.Comparison("HD95", "mm", "unet", "fcn", 12, -1.5, -2.0, -1.0, 2.0, 0.001, p_holm=0.001,
                         statistic_name="penalised mean", rank_direction=-1)  # fmt: skip
    assert stats.comparison_sentence(c).startswith(
        "fcn beats unet by 1.50 mm HD95 (difference of penalised means; 95% CI 1.00–2.00"
    )


def test_rank_stability_dominant_and_tied_models():
    rng = np.random.default_rng(0)
    wide = pd.DataFrame({"fcn": rng.uniform(0.6, 0.7, 20), "unet": rng.uniform(0.8, 0.9, 20)})
    shares = stats.rank_stability(wide, higher_is_better=True, seed=0)
    assert shares.to_dict() == {"fcn": 0.0, "unet": 1.0}
    assert stats.rank_stability(wide, higher_is_better=False, seed=0).to_dict() == {"fcn": 1.0, "unet": 0.0}
    close = pd.DataFrame({"a": rng.normal(0.8, 0.05, 30), "b": rng.normal(0.8, 0.05, 30)})
    shares = stats.rank_stability(close, higher_is_better=True, seed=1)
    assert shares.sum() == pytest.approx(1.0)
    assert 0.05 < shares["a"] < 0.95  # neither wins every resample
    pd.testing.assert_series_equal(shares, stats.rank_stability(close, higher_is_better=True, seed=1))


def test_pareto_front():
    memory = np.array([800.0, 1500.0, 1600.0, math.nan, 900.0])
    dice = np.array([0.70, 0.81, 0.80, 0.9, 0.70])
    # 1600 MB / 0.80 is dominated by 1500 / 0.81; 900 / 0.70 by 800 / 0.70; NaN never on the front.
    assert stats.pareto_front(memory, dice).tolist() == [True, True, False, False, False]
    throughput = np.array([2.5, 1.1, 1.0, 1.0, 2.0])
    assert stats.pareto_front(throughput, dice, cost_higher_is_better=True).tolist() == [True, True, False, True, False]
