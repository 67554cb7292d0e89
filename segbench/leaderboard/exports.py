"""The leaderboard's numbers as tidy CSV tables (one row per observation; wide tables only on the page)."""

from __future__ import annotations

import pandas as pd

from segbench.leaderboard.build import Leaderboard
from segbench.leaderboard.comparability import FIELDS
from segbench.leaderboard.scores import model_means
from segbench.leaderboard.tables import verdict_against_best
from segbench.metrics import get_metric


def _verdicts(board: Leaderboard, dataset: str, model: str) -> dict[str, str]:
    """The run's verdicts on ``model`` as the page gives them, with the best model named: ``beats unet``, ``beaten by
    unet``, else the verdict as the report names it."""
    run = next(r for r in board.runs if r.dataset == dataset)

    def side(label: str) -> str:
        word, c = verdict_against_best(run, model, label)
        if c is None or not c.significant:
            return word
        return f"beats {c.reference}" if word == "beats" else f"beaten by {c.reference}"

    return {f"verdict_{name}": side(label) for name, label in (("dice", "Dice"), ("hd95", "HD95"))}


def per_dataset_frame(board: Leaderboard) -> pd.DataFrame:
    """One row per (dataset, model evaluated there): means, rank, wins, costs and the report's verdicts."""
    ranks = board.dataset_ranks
    names = list(dict.fromkeys(["dice", "hd95", board.metric.name]))
    rows = []
    for run in board.runs:
        means = {name: model_means(run, get_metric(name)) for name in names}
        costs = run.board.set_index("model")
        for model in run.models:
            cost = costs.loc[model]
            rows.append({"dataset": run.dataset, "model": model, "cases": int(cost["cases"]),
                         **{f"{n}_mean": means[n].get(model) for n in names},
                         "rank": ranks.at[run.dataset, model] if model in ranks else None,
                         "wins": board.wins.at[run.dataset, model] if model in board.wins else None,
                         "params": cost.get("params"), "train_iters_per_s": cost.get("train_iters_per_s"),
                         "tensor_peak_mb": cost.get("tensor_peak_mb"), **_verdicts(board, run.dataset, model),
                         "run_dir": board.place(run)})  # fmt: skip
    return pd.DataFrame(rows)


def comparability_frame(board: Leaderboard) -> pd.DataFrame:
    """One row per run: dataset, run folder, and each condition of :data:`FIELDS`, plus which differ."""
    differing = ",".join(board.comparability.differing)
    return pd.DataFrame([{"dataset": run.dataset, "run_dir": board.place(run),
                          **{f: board.comparability.conditions[run.dataset][f] for f in FIELDS},
                          "differing_fields": differing} for run in board.runs])  # fmt: skip


def friedman_frame(board: Leaderboard) -> pd.DataFrame:
    """One row: whether the test ran (and why not), its statistic, p-value, critical difference and caveat."""
    r = board.friedman
    return pd.DataFrame([{"ran": r.ran, "reason": r.reason, "datasets": r.n_datasets, "models": " ".join(r.models),
                          "left_out": " ".join(r.left_out), "statistic": r.statistic, "p_value": r.p_value,
                          "critical_difference": r.critical_difference, "caveat": r.caveat}])  # fmt: skip


def csv_tables(board: Leaderboard) -> dict[str, pd.DataFrame]:
    """File name → table, for every CSV file of the leaderboard folder."""
    found = {
        "rankings.csv": board.rankings.assign(missing_from=[";".join(board.missing.get(m, ())) for m in
                                                            board.rankings["model"]]),
        "per_dataset.csv": per_dataset_frame(board),
        "rank_stability.csv": board.draws.summary(),
        "rank_frequencies.csv": board.draws.frequencies(),
        "comparability.csv": comparability_frame(board),
        "friedman.csv": friedman_frame(board),
    }  # fmt: skip
    if board.friedman.ran:
        found["nemenyi.csv"] = board.friedman.nemenyi.rename_axis("model").reset_index()
    return found
