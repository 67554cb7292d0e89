"""The leaderboard's ranking methods against hand-computed cases: ties, direction, a model missing from a dataset.

Pure functions first (tables written out here), then the same methods on hand-built run directories
(tests/leaderboard_fixtures.py), where the per-dataset values, wins and ranks are known exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from leaderboard_fixtures import write_run

from segbench.errors import ConfigError
from segbench.leaderboard import build_leaderboard
from segbench.leaderboard.bootstrap import ACROSS, aggregate_draws, case_bootstrap_ranks
from segbench.leaderboard.ranking import (
    aggregate_then_rank,
    all_rankings,
    consensus,
    rank_by_wins,
    rank_then_aggregate,
    rank_values,
)
from segbench.leaderboard.tables import dataset_table, values_matrix

NAN = math.nan
# Three datasets, d missing from C. Ranks by hand: A a1 b2.5 c2.5 d4; B b1 d2 a3 c4; C c1 a2 b3.
VALUES = pd.DataFrame(
    {"a": [0.90, 0.70, 0.88], "b": [0.80, 0.85, 0.86], "c": [0.80, 0.60, 0.90], "d": [0.70, 0.75, NAN]},
    index=["A", "B", "C"],
)
# Wins when every unequal pair is a significant difference: A a3 b1 c1 d0; B b3 d2 a1 c0; C c2 a1 b0.
WINS = pd.DataFrame({"a": [3, 1, 1], "b": [1, 3, 0], "c": [1, 0, 2], "d": [0, 2, NAN]}, index=["A", "B", "C"])


def test_rank_values_gives_ties_the_average_rank_in_both_directions():
    values = pd.Series({"a": 0.9, "b": 0.8, "c": 0.8, "d": NAN, "e": 0.7})
    assert rank_values(values, higher_is_better=True).to_dict() == pytest.approx(
        {"a": 1.0, "b": 2.5, "c": 2.5, "d": NAN, "e": 4.0}, nan_ok=True
    )
    assert rank_values(values, higher_is_better=False).to_dict() == pytest.approx(
        {"a": 4.0, "b": 2.5, "c": 2.5, "d": NAN, "e": 1.0}, nan_ok=True
    )


def test_rank_then_aggregate_by_hand_with_a_missing_model():
    result = rank_then_aggregate(VALUES, higher_is_better=True)
    # a (1+3+2)/3, b (2.5+1+3)/3, c (2.5+4+1)/3, d (4+2)/2: d is ranked among the models present on A and B.
    assert result["mean_rank"].to_dict() == pytest.approx({"a": 2.0, "b": 6.5 / 3, "c": 2.5, "d": 3.0})
    assert result["rank"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}


def test_aggregate_then_rank_by_hand():
    result = aggregate_then_rank(VALUES, higher_is_better=True)
    assert result["mean_value"].to_dict() == pytest.approx({"a": 2.48 / 3, "b": 2.51 / 3, "c": 2.3 / 3, "d": 0.725})
    assert result["rank"].to_dict() == {"a": 2.0, "b": 1.0, "c": 3.0, "d": 4.0}
    lower = aggregate_then_rank(1 - VALUES, higher_is_better=False)  # the same order for a lower-is-better metric
    assert lower["rank"].to_dict() == result["rank"].to_dict()


def test_test_then_rank_and_the_consensus_by_hand():
    wins = rank_by_wins(WINS)
    assert wins["wins"].to_dict() == {"a": 5, "b": 4, "c": 3, "d": 2}
    assert wins["rank"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    table = all_rankings(VALUES, WINS, higher_is_better=True).set_index("model")
    # mean of the three ranks: a (1+2+1)/3, b (2+1+2)/3, c 3, d 4
    assert table["mean_of_ranks"].to_dict() == pytest.approx({"a": 4 / 3, "b": 5 / 3, "c": 3.0, "d": 4.0})
    assert table["consensus"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert table["datasets"].to_dict() == {"a": 3, "b": 3, "c": 3, "d": 2}


def test_ties_across_datasets_share_the_average_rank():
    values = pd.DataFrame({"a": [0.75, 0.25], "b": [0.5, 0.5], "c": [0.25, 0.0]}, index=["X", "Y"])
    rta = rank_then_aggregate(values, higher_is_better=True)  # X: a1 b2 c3, Y: b1 a2 c3
    assert rta["mean_rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    assert rta["rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    atr = aggregate_then_rank(values, higher_is_better=True)  # a and b both average 0.5
    assert atr["rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    wins = pd.DataFrame({"a": [2, 0], "b": [1, 1], "c": [0, 0]}, index=["X", "Y"])
    assert rank_by_wins(wins)["rank"].to_dict() == {"a": 1.5, "b": 1.5, "c": 3.0}
    agreed = consensus([pd.Series({"a": 1.0, "b": 2.0}), pd.Series({"a": 2.0, "b": 1.0})])
    assert agreed["rank"].to_dict() == {"a": 1.5, "b": 1.5}


def test_case_bootstrap_uses_the_same_cases_for_every_model():
    # b is a copy of a shifted down: on every paired draw a ranks first, never a tie and never behind.
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 0.9, 15)
    wide = pd.DataFrame({"a": a, "b": a - 0.01, "c": rng.uniform(0.0, 1.0, 15)})
    ranks = case_bootstrap_ranks(wide, higher_is_better=True, n_resamples=200, rng=np.random.default_rng(0))
    assert ranks.shape == (200, 3)
    assert np.all(ranks[:, 0] < ranks[:, 1])
    assert np.allclose(ranks.sum(axis=1), 6.0)


def test_aggregate_draws_ranks_the_mean_rank_over_present_datasets():
    first = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 3.0]])
    second = np.array([[2.0, 1.0, NAN], [2.0, 1.0, NAN]])  # the third model is missing here
    assert aggregate_draws([first, second]).tolist() == [[1.5, 1.5, 3.0], [2.0, 1.0, 3.0]]


# ---------------------------------------------------------------------------------------------- on run directories


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    return [write_run(root, name, {m: VALUES.at[name, m] for m in VALUES.columns if not math.isnan(VALUES.at[name, m])})
            for name in VALUES.index]  # fmt: skip


def test_leaderboard_of_three_runs_matches_the_hand_computed_ranks(runs):
    board = build_leaderboard(runs, n_resamples=50)
    assert board.datasets == ("A", "B", "C")
    pd.testing.assert_frame_equal(board.values.loc[VALUES.index, VALUES.columns], VALUES)
    # 12 cases of constant differences: every unequal pair is a significant difference after Holm.
    pd.testing.assert_frame_equal(board.wins.loc[WINS.index, WINS.columns], WINS.astype(float))
    table = board.rankings.set_index("model")
    assert table["rank_then_aggregate"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert table["aggregate_then_rank"].to_dict() == {"a": 2.0, "b": 1.0, "c": 3.0, "d": 4.0}
    assert table["test_then_rank"].to_dict() == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert board.models == ("a", "b", "c", "d")
    assert board.missing == {"d": ("C",)}


def test_a_lower_is_better_metric_ranks_the_same_way(runs):
    board = build_leaderboard(runs, metric="hd95", n_resamples=20)  # hd95 = 10 (1 - Dice) in these runs
    assert board.rankings.set_index("model")["rank_then_aggregate"].to_dict() == {"a": 1, "b": 2, "c": 3, "d": 4}


def test_differences_of_one_sign_on_every_case_give_every_draw_the_point_ranks(runs):
    board = build_leaderboard(runs, n_resamples=30)
    summary = board.draws.summary().set_index(["dataset", "model"])
    assert summary.loc[("B", "d"), "median"] == 2.0 and summary.loc[("B", "d"), "low"] == 2.0
    assert summary.loc[("A", "b"), "median"] == 2.5
    assert ("C", "d") not in summary.index
    across = summary.xs(ACROSS)["median"].to_dict()
    assert across == {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}


def test_bootstrap_is_seeded_and_independent_of_the_argument_order(tmp_path):
    rng = np.random.default_rng(5)
    runs = [write_run(tmp_path, name, {m: rng.uniform(0.6, 0.9, 12).tolist() for m in ("a", "b", "c")})
            for name in ("P", "Q", "R")]  # fmt: skip
    first = build_leaderboard(runs, n_resamples=40, seed=3)
    again = build_leaderboard(runs[::-1], n_resamples=40, seed=3)
    other = build_leaderboard(runs, n_resamples=40, seed=4)
    assert first.draws.draws.keys() == again.draws.draws.keys()
    for name, ranks in first.draws.draws.items():
        assert np.array_equal(ranks, again.draws.draws[name], equal_nan=True)
    assert first.rankings.equals(again.rankings)
    assert any(not np.array_equal(first.draws.draws[n], other.draws.draws[n]) for n in ("P", "Q", "R"))


def test_two_runs_of_one_dataset_are_refused_naming_both(tmp_path):
    one = write_run(tmp_path / "x", "Heart", {"a": 0.8, "b": 0.7})
    two = write_run(tmp_path / "y", "Heart", {"a": 0.8, "b": 0.7})
    with pytest.raises(ConfigError, match="Heart") as caught:
        build_leaderboard([one, two], n_resamples=10)
    assert str(one) in str(caught.value) and str(two) in str(caught.value)
    with pytest.raises(ConfigError, match="given twice"):
        build_leaderboard([one, one], n_resamples=10)


def test_an_unknown_metric_is_refused_with_the_choices(runs):
    with pytest.raises(ConfigError, match="--metric 'dcie'.*dice"):
        build_leaderboard(runs, metric="dcie")


def test_runs_differing_in_budget_precision_and_hardware_are_flagged(tmp_path):
    runs = [write_run(tmp_path, "A", {"a": 0.8, "b": 0.7}), write_run(tmp_path, "B", {"a": 0.8, "b": 0.7}),
            write_run(tmp_path, "C", {"a": 0.8, "b": 0.7}, iterations=200, precision="bf16",
                      hardware="cuda: NVIDIA H100")]  # fmt: skip
    check = build_leaderboard(runs, n_resamples=10).comparability
    assert check.differing == ("budget", "precision", "hardware")
    assert check.conditions["C"]["budget"] == "200 iterations" and check.conditions["A"]["precision"] == "fp32"
    assert any("C 200 iterations" in line for line in check.sentences())
    same = build_leaderboard(runs[:2], n_resamples=10).comparability
    assert same.comparable and same.differing == ()


def test_friedman_needs_three_datasets_and_three_complete_models(runs, tmp_path):
    two = build_leaderboard(runs[:2], n_resamples=10).friedman
    assert not two.ran and "at least 3 datasets" in two.reason
    pairs = [write_run(tmp_path, n, {"a": 0.8, "b": 0.7}) for n in ("P", "Q", "R")]
    assert "at least 3 models" in build_leaderboard(pairs, n_resamples=10).friedman.reason


def test_a_model_without_an_evaluated_case_is_marked_missing_with_the_reason(tmp_path):
    one = write_run(tmp_path, "A", {"a": 0.8, "b": 0.7, "e": 0.6})
    two = write_run(tmp_path, "B", {"a": 0.8, "b": 0.7})
    manifest = json.loads((two / "manifest.json").read_text())
    (two / "manifest.json").write_text(json.dumps({**manifest, "models": ["a", "b", "e"]}))  # e's jobs never ran
    board = build_leaderboard([one, two], n_resamples=10)
    assert board.missing == {"e": ("B",)}
    assert ("e †", "no evaluated case") == dataset_table(board, board.runs[1]).rows[-1][:2]
    assert values_matrix(board).rows[-1] == ("e †", "0.600 (3)", "no evaluated case")
