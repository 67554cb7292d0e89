"""The leaderboard's tables as formatted cells (:class:`segbench.report.tables.Table`), from a :class:`Leaderboard`.

A model missing from a dataset carries a dagger (``†``) in every table; :func:`dagger_note` is its footnote.
"""

from __future__ import annotations

import math

import pandas as pd

from segbench.leaderboard.bootstrap import ACROSS
from segbench.leaderboard.build import Leaderboard
from segbench.leaderboard.comparability import FIELDS
from segbench.leaderboard.runs import DatasetRun
from segbench.leaderboard.scores import model_means
from segbench.metrics import get_metric
from segbench.report.stats import Comparison, p_cell
from segbench.report.tables import Table, fmt, fmt_count, memory_cell

DAGGER = "†"
_HEADLINE = ("dice", "hd95")  # the per-dataset tables always show these two, as the run reports' leaderboards do


def model_label(board: Leaderboard, model: str) -> str:
    """``model``, with a dagger when it is missing from a dataset."""
    return f"{model} {DAGGER}" if model in board.missing else model


def dagger_note(board: Leaderboard) -> str:
    """The footnote of the dagger ("" when every model has every dataset)."""
    if not board.missing:
        return ""
    lacking = "; ".join(f"{m} lacks {', '.join(datasets)}" for m, datasets in board.missing.items())
    return (
        f"{DAGGER} Not evaluated on every dataset ({lacking}): ranked among the models present on each dataset; its "
        "mean rank, mean value and wins cover only its datasets, and it is left out of the Friedman test."
    )


def _best(table_rows: list[tuple[str, ...]], numbers: list[float], column: int, higher: bool) -> set[tuple[int, int]]:
    finite = [v for v in numbers if not math.isnan(v)]
    if len(finite) < 2:
        return set()
    target = max(finite) if higher else min(finite)
    return {(i, column) for i, v in enumerate(numbers) if v == target}


def rankings_table(board: Leaderboard) -> Table:
    """One row per model (consensus order; the model first, as the page keeps the first column in view): the
    consensus rank, each method's score and rank, and the mean of the three ranks."""
    metric = board.metric
    columns = ("model", "consensus rank", "datasets", "mean rank", "rank-then-aggregate rank",
               f"mean {metric.display()}", "aggregate-then-rank rank", "significant wins", "test-then-rank rank",
               "mean of the three ranks")  # fmt: skip
    rows, best = [], set()
    for _, r in board.rankings.iterrows():
        rows.append((model_label(board, r["model"]), _rank(r["consensus"]), str(int(r["datasets"])),
                     fmt(r["mean_rank"], 2), _rank(r["rank_then_aggregate"]), fmt(r["mean_value"], metric.digits),
                     _rank(r["aggregate_then_rank"]), fmt(r["wins"], 0), _rank(r["test_then_rank"]),
                     fmt(r["mean_of_ranks"], 2)))  # fmt: skip
    for column in (1, 4, 6, 8):
        best |= _best(rows, [float(row[column]) if row[column] != "–" else math.nan for row in rows], column, False)
    return Table(columns, tuple(rows), frozenset(best))


def values_matrix(board: Leaderboard) -> Table:
    """Models × datasets: each model's mean metric and, in brackets, its rank on that dataset (best marked)."""
    ranks = board.dataset_ranks
    rows, best = [], set()
    for i, model in enumerate(board.models):
        cells = [model_label(board, model)]
        for dataset in board.datasets:
            value, rank = board.values.at[dataset, model], ranks.at[dataset, model]
            run = board.runs[board.datasets.index(dataset)]
            cells.append(_absent(run, model) if pd.isna(value) else f"{fmt(value, board.metric.digits)} ({rank:g})")
            if rank == 1 and ranks.loc[dataset].notna().sum() > 1:
                best.add((i, len(cells) - 1))
        rows.append(tuple(cells))
    return Table(("model", *board.datasets), tuple(rows), frozenset(best))


def _absent(run: DatasetRun, model: str) -> str:
    """Why ``model`` has no value on ``run``'s dataset: not one of the run's models, or no evaluated case."""
    return "no evaluated case" if model in run.context.models else "not in this run"


def verdict_against_best(run: DatasetRun, model: str, label: str) -> tuple[str, Comparison | None]:
    """The run's verdict on ``model`` against its best model in metric ``label``, from ``model``'s side.

    Returns ``("reference", None)`` for the best model, ``("", None)`` without a comparison, ``("beats" | "beaten",
    c)`` for a significant one (the winner's side: a bare verdict in the loser's row would read as its win), else
    ``(c.verdict, c)``.
    """
    if run.models and model == run.models[0]:
        return "reference", None
    found: list[Comparison] = [c for c in run.comparisons if c.metric == label and c.other == model]
    if not found:
        return "", None
    c = found[0]
    if c.significant:
        return ("beats" if c.winner == model else "beaten"), c
    return c.verdict, c


def _verdict(run: DatasetRun, model: str, label: str) -> str:
    """The run's verdict on ``model`` against its best model in metric ``label``, as its report has it (short)."""
    word, c = verdict_against_best(run, model, label)
    if c is None:
        return word or "–"
    return f"{word} (p {p_cell(c.p_holm)})" if c.significant else word


def _rank(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:g}"


def _mean_cell(run: DatasetRun, model: str, name: str) -> str:
    metric = get_metric(name)
    means = model_means(run, metric)
    return fmt(means.get(model, math.nan), metric.digits)


def dataset_table(board: Leaderboard, run: DatasetRun) -> Table:
    """One dataset: per model its cases, mean Dice and HD95 (and the ranked metric), rank, costs and verdicts."""
    shown = list(dict.fromkeys([*_HEADLINE, board.metric.name]))
    columns = ("model", "cases", *(f"{get_metric(n).display()} mean" for n in shown), f"rank by {board.metric.label}",
               "params", "train it/s", "tensor peak (MiB)", "Dice vs best", "HD95 vs best")  # fmt: skip
    rows = []
    ranks = board.dataset_ranks.loc[run.dataset]
    for model in board.models:
        lines = run.board[run.board["model"] == model]
        if model not in run.models or lines.empty:
            rows.append((model_label(board, model), _absent(run, model), *("–" for _ in columns[2:])))
            continue
        r = lines.iloc[0]
        rank = ranks.get(model, math.nan)
        rows.append((model_label(board, model), str(int(r["cases"])), *(_mean_cell(run, model, n) for n in shown),
                     _rank(rank), fmt_count(r.get("params")), fmt(r.get("train_iters_per_s"), 2),
                     memory_cell("tensor_peak_mb")(r), _verdict(run, model, "Dice"),
                     _verdict(run, model, "HD95")))  # fmt: skip
    return Table(columns, tuple(rows))


def stability_table(board: Leaderboard) -> Table:
    """Per model: median rank [95 % interval] on each dataset's bootstrap and across datasets, P(first) across."""
    summary = board.draws.summary().set_index(["dataset", "model"])
    names = [*board.datasets, ACROSS]
    rows = []
    for model in board.models:
        cells = [model_label(board, model)]
        for name in names:
            if (name, model) not in summary.index:
                cells.append("–")
                continue
            s = summary.loc[(name, model)]
            cells.append(f"{s['median']:g} [{s['low']:g}–{s['high']:g}]")
        first = summary["p_first"].get((ACROSS, model), math.nan)
        rows.append((*cells, fmt(first, 3)))
    return Table(("model", *names, f"P(first) across, {board.draws.n_resamples} draws"), tuple(rows))


def comparability_table(board: Leaderboard) -> Table:
    """One row per run: its dataset, each condition (differing ones flagged with ``≠``)."""
    differing = set(board.comparability.differing)
    columns = ("dataset", "run", *(f"{f} ≠" if f in differing else f for f in FIELDS))
    rows = tuple((run.dataset, board.place(run), *(board.comparability.conditions[run.dataset][f] for f in FIELDS))
                 for run in board.runs)  # fmt: skip
    return Table(columns, rows)


def nemenyi_table(board: Leaderboard) -> Table:
    """The Nemenyi p-values (models × models); ``< 0.05`` cells marked."""
    result = board.friedman
    models = list(result.models)
    rows, best = [], set()
    for i, a in enumerate(models):
        cells = [a]
        for j, b in enumerate(models):
            p = float(result.nemenyi.at[a, b]) if a != b else math.nan
            cells.append(p_cell(p) if a != b else "–")
            if a != b and p < 0.05:
                best.add((i, j + 1))
        rows.append(tuple(cells))
    return Table(("model", *models), tuple(rows), frozenset(best))
