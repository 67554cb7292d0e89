"""Report tables: from the tidy run-directory tables to numeric wide tables, then to formatted cells.

Numeric builders (``per_case_table``, ``leaderboard``, ``fold_table``, ``job_grid``, ``speed_table``) return
DataFrames; ``format_*`` functions turn them into :class:`Table` objects (strings plus which cells are the
best of their column) that :mod:`segbench.report.render` writes as Markdown or HTML.

Multi-label tasks: every per-case value is the **mean over the task's foreground labels** of that case (one
leaderboard, not one per label); a case counts as a miss when any of its labels is a miss. With one label
(Task02) this is the label's value.

Misses (exactly one of prediction and reference empty) have infinite distances. Means and medians count them
as the metric's stated penalty (the case's image diagonal in millimetres, ``diagonal_mm``, for distances): one
rule, :func:`segbench.metrics.penalise` then :func:`segbench.metrics.summarise`. Every metric column comes from
the metric catalogue (:func:`segbench.metrics.metric_catalogue`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from segbench.metrics import PRIMARY_METRIC, Metric, get_metric, metric_catalogue, penalise, summarise
from segbench.report.stats import bootstrap_ci
from segbench.rundir import RESULT_FILE

MISSING = "missing"


@dataclass(frozen=True)
class Table:
    """Formatted table cells; ``best`` holds (row, column) indices to highlight."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    best: frozenset[tuple[int, int]] = field(default_factory=frozenset)


def metrics_in(frame: pd.DataFrame) -> list[Metric]:
    """Catalogue metrics that have a column in ``frame`` (a run made before a metric was registered lacks it)."""
    return [metric for metric in metric_catalogue() if metric.name in frame.columns]


def box_metrics(per_case: pd.DataFrame) -> list[Metric]:
    """Metrics drawn as box plots (column :attr:`Metric.penalised_column` of ``per_case``)."""
    return [metric for metric in metrics_in(per_case) if metric.box_plot]


def per_case_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, fold, case_id), values averaged over labels.

    Args:
        metrics: ``metrics.csv`` rows (see docs/run-directory.md).

    Returns:
        Columns ``model, fold, repeat, case_id`` (repeat 0 for runs made before repeats existed), then for every
        catalogue metric present in ``metrics`` its column (e.g.
        ``hd95``, keeping ``inf`` for misses) and, for metrics with a miss penalty, ``<name>_pen`` (misses replaced
        by the penalty before averaging over labels); then ``miss, labels``. Sorted by model, fold, repeat, case_id.
    """
    present = metrics_in(metrics)
    values = [c for m in present for c in dict.fromkeys((m.name, m.penalised_column))]
    columns = ["model", "fold", "repeat", "case_id", *values, "miss", "labels"]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    frame = metrics.copy()
    frame["repeat"] = pd.to_numeric(frame["repeat"], errors="coerce").fillna(0).astype(int) if "repeat" in frame else 0
    frame["case_id"] = frame["case_id"].astype(str)
    frame["model"] = frame["model"].astype(str)
    diagonal = pd.to_numeric(frame["diagonal_mm"], errors="coerce").to_numpy(float)
    for metric in present:
        frame[metric.name] = pd.to_numeric(frame[metric.name], errors="coerce")
        frame[metric.penalised_column] = penalise(metric, frame[metric.name], diagonal)
    frame["miss"] = frame["miss"].map(_as_bool).fillna(False).astype(bool)
    grouped = frame.groupby(["model", "fold", "repeat", "case_id"], sort=True)
    out = grouped[values].mean()
    out["miss"] = grouped["miss"].any()
    out["labels"] = grouped.size()
    return out.reset_index()[columns]


def case_means(per_case: pd.DataFrame) -> pd.DataFrame:
    """:func:`per_case_table` averaged over repeats: one row per (model, fold, case_id), ``repeats`` = how many.

    Every value column is the mean over the case's repeats (its out-of-fold prediction by each training seed);
    ``miss`` is true when any repeat missed. With one repeat the values are unchanged.
    """
    if per_case.empty:
        return per_case.drop(columns="repeat", errors="ignore").assign(repeats=pd.Series(dtype=int))
    values = [c for c in per_case.columns if c not in ("model", "fold", "repeat", "case_id", "miss", "labels")]
    grouped = per_case.groupby(["model", "fold", "case_id"], sort=True)
    out = grouped[values].mean()
    out["miss"] = grouped["miss"].any()
    out["labels"] = grouped["labels"].max()
    out["repeats"] = grouped.size()
    return out.reset_index()


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        return {"true": True, "false": False, "1": True, "0": False}.get(value.strip().lower())
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def job_grid(jobs: pd.DataFrame, *, models: list[str], n_folds: int, repeats: int = 1) -> pd.DataFrame:
    """The expected (model × fold × repeat) grid with each job's status; never drops a job.

    Args:
        jobs: ``jobs.csv`` rows (without a ``repeat`` column every row is repeat 0).
        models: expected models (manifest order); models only present in ``jobs`` are appended.
        n_folds: number of folds in splits.json; folds beyond it found in ``jobs`` are kept too.
        repeats: the run's repeat count; repeats beyond it found in ``jobs`` are kept too.

    Returns:
        Columns ``model, fold, repeat, status, reason``; ``status`` is ``"missing"`` where no result exists.
    """
    seen = {(str(m), int(f), int(r)): (str(s), str(why)) for m, f, r, s, why in _job_rows(jobs)}
    all_models = list(models) + sorted({m for m, _, _ in seen} - set(models))
    folds = sorted(set(range(n_folds)) | {f for _, f, _ in seen})
    repeat_ids = sorted(set(range(repeats)) | {r for _, _, r in seen})
    rows = []
    for model in all_models:
        for fold in folds:
            for repeat in repeat_ids:
                status, reason = seen.get((model, fold, repeat), (MISSING, f"no {RESULT_FILE}: the job never finished"))
                rows.append({"model": model, "fold": fold, "repeat": repeat, "status": status, "reason": reason})
    return pd.DataFrame(rows, columns=["model", "fold", "repeat", "status", "reason"])


def _job_rows(jobs: pd.DataFrame) -> list[tuple[Any, Any, Any, Any, Any]]:
    if jobs.empty:
        return []
    reasons = jobs["reason"].fillna("") if "reason" in jobs else pd.Series("", index=jobs.index)
    repeat = jobs["repeat"].fillna(0).astype(int) if "repeat" in jobs else pd.Series(0, index=jobs.index)
    return list(zip(jobs["model"], jobs["fold"], repeat, jobs["status"], reasons, strict=True))


def _done_jobs(jobs: pd.DataFrame, model: str) -> pd.DataFrame:
    if jobs.empty:
        return jobs
    return jobs[(jobs["model"].astype(str) == model) & (jobs["status"] == "done")]


def _job_mean(done: pd.DataFrame, column: str) -> float:
    if column not in done or done.empty:
        return math.nan
    values = pd.to_numeric(done[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _job_min(done: pd.DataFrame, column: str) -> float:
    if column not in done or done.empty:
        return math.nan
    values = pd.to_numeric(done[column], errors="coerce").dropna()
    return float(values.min()) if len(values) else math.nan


def _job_max(done: pd.DataFrame, column: str) -> float:
    if column not in done or done.empty:
        return math.nan
    values = pd.to_numeric(done[column], errors="coerce").dropna()
    return float(values.max()) if len(values) else math.nan


def statistic_columns(metric: Metric) -> list[str]:
    """The leaderboard / summary.csv columns of one metric: ``<name>_<statistic>``, ``ci`` as ``_ci_low, _ci_high``."""
    ci = (f"{metric.name}_ci_low", f"{metric.name}_ci_high")
    return [
        c for statistic in metric.leaderboard for c in (ci if statistic == "ci" else (f"{metric.name}_{statistic}",))
    ]


def metric_statistics(per_case: pd.DataFrame, *, seed: int = 0) -> dict[str, float]:
    """The leaderboard's metric columns for one model's cases: ``<name>_<statistic>`` per catalogue metric.

    Statistics (:attr:`Metric.leaderboard`) are taken over the penalised per-case values: ``mean``, ``median``,
    ``sd`` (:func:`segbench.metrics.summarise`) and ``ci`` (``_ci_low``/``_ci_high``: 95 % percentile bootstrap
    of the mean; NaN when a value is not finite).
    """
    row: dict[str, float] = {}
    for metric in metrics_in(per_case):
        values = pd.to_numeric(per_case[metric.penalised_column], errors="coerce").dropna().to_numpy(float)
        summary = summarise(values)
        for statistic in metric.leaderboard:
            if statistic == "ci":
                finite = values.size and np.all(np.isfinite(values))
                low, high = bootstrap_ci(values, seed=seed) if finite else (math.nan, math.nan)
                row[f"{metric.name}_ci_low"], row[f"{metric.name}_ci_high"] = low, high
            else:
                row[f"{metric.name}_{statistic}"] = getattr(summary, statistic)
    return row


def _cost_columns(jobs: pd.DataFrame, model: str) -> dict[str, Any]:
    """Costs of a model from its done jobs (jobs.csv names; means over jobs, maxima for sizes and peaks)."""
    done = _done_jobs(jobs, model)
    model_jobs = jobs[jobs["model"].astype(str) == model] if not jobs.empty else jobs
    return {
        "params": _job_max(done, "params"),
        "mflop_per_voxel": _job_mean(done, "mflop_per_voxel_forward"),
        **{column: _job_max(done, column) for column, *_ in MEMORY_MEASURES},
        **{f"{column}_min": _job_min(done, column) for column, *_ in MEMORY_MEASURES},
        "train_iters_per_s": _job_mean(done, "train_iters_per_s"),
        "inference_seconds_per_case": _job_mean(done, "inference_seconds_per_case"),
        "train_seconds": _job_mean(done, "train_seconds"),
        "jobs_done": int(len(done)),
        "jobs": int(len(model_jobs)),
        # Where the figures were measured (jobs.csv `hardware`, when the run records it): costs compare only within one.
        "hardware": ", ".join(sorted({str(v) for v in done["hardware"].dropna()})) if "hardware" in done else "",
    }


def leaderboard(per_case: pd.DataFrame, jobs: pd.DataFrame, *, models: list[str], seed: int = 0) -> pd.DataFrame:
    """One row per model, pooled over its out-of-fold cases, best mean of the primary metric (Dice) first.

    Columns: ``model, cases``; per catalogue metric its statistics (:func:`metric_statistics`: with the built-in
    metrics ``dice_mean, dice_sd, dice_ci_low, dice_ci_high, hd95_median, hd95_mean, assd_mean, nsd_mean``, all with
    misses counted as the penalty); ``misses, params, mflop_per_voxel``; per memory measure of
    :data:`MEMORY_MEASURES` its largest value over the model's done jobs and, as ``<column>_min``, its smallest;
    ``train_iters_per_s, inference_seconds_per_case, train_seconds`` (means over done jobs, named as in jobs.csv),
    ``jobs_done, jobs``, ``hardware`` (the jobs' hardware, "" when jobs.csv does not record it) and ``complete``
    (the model has every case any model was evaluated on).
    """
    all_models = list(models) + sorted(set(per_case["model"].astype(str)) - set(models))
    rows = []
    for model in all_models:
        cases = per_case[per_case["model"] == model]
        rows.append({"model": model, "cases": int(len(cases)), **metric_statistics(cases, seed=seed),
                     "misses": int(cases["miss"].sum()), **_cost_columns(jobs, model)})  # fmt: skip
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    all_cases = per_case["case_id"].nunique()
    frame["complete"] = frame["cases"] == all_cases
    # Best mean of the primary metric first; models without cases last; ties by name so the order is deterministic.
    primary = get_metric(PRIMARY_METRIC)
    key = frame[f"{primary.name}_mean"].astype(float)
    frame["_key"] = (key if primary.higher_is_better else -key).fillna(-math.inf)
    frame = frame.sort_values(["_key", "model"], ascending=[False, True], kind="stable").drop(columns="_key")
    # Counts stay integers in summary.csv (nullable: a model without a done job has no parameter count).
    frame["params"] = frame["params"].round().astype("Int64")
    return frame.reset_index(drop=True)


def fold_table(per_case: pd.DataFrame, *, models: list[str], n_folds: int, metric: str) -> pd.DataFrame:
    """Per-fold means of ``metric`` for each model, the mean of fold means and the pooled-case mean.

    Returns:
        Index = model; columns ``fold_0 … fold_{k-1}`` (NaN where the fold has no case), ``mean_of_folds``
        (over folds that have cases) and ``pooled`` (over all cases).
    """
    all_models = list(models) + sorted(set(per_case["model"].astype(str)) - set(models))
    folds = sorted(set(range(n_folds)) | set(int(f) for f in per_case["fold"].unique()))
    rows = {}
    for model in all_models:
        cases = per_case[per_case["model"] == model]
        means = cases.groupby("fold")[metric].mean()
        row = {f"fold_{fold}": float(means.get(fold, math.nan)) for fold in folds}
        row["mean_of_folds"] = float(means.mean()) if len(means) else math.nan
        row["pooled"] = float(cases[metric].mean()) if len(cases) else math.nan
        rows[model] = row
    return pd.DataFrame.from_dict(rows, orient="index")


_BENCH_KINDS = ("forward", "train_step")  # shown first, in this order
_BENCH_NAME = re.compile(r"^(?P<test>[^\[]+)\[(?P<model>.+)\]$")


def speed_table(benchmark: dict[str, Any]) -> pd.DataFrame:
    """Per-model speed table from a pytest-benchmark JSON (``--benchmark-json`` / autosave).

    Benchmarks named ``<test>[<model>]`` are kept; ``test_forward`` and ``test_train_step`` become the
    ``forward_ms`` / ``train_step_ms`` columns (median time), others ``<test>_ms``. ``extra_info`` keys
    ``params`` and ``flops_per_s`` give ``params`` and ``<kind>_gflop_per_s``.

    Raises:
        ValueError: the JSON has no ``benchmarks`` list.
    """
    entries = benchmark.get("benchmarks") if isinstance(benchmark, dict) else None
    if not isinstance(entries, list):
        raise ValueError("no 'benchmarks' list (expected pytest-benchmark JSON)")
    rows: dict[str, dict[str, Any]] = {}
    for entry in entries:
        match = _BENCH_NAME.match(str(entry.get("name", "")))
        if not match:
            continue
        kind = match["test"].removeprefix("test_")
        row = rows.setdefault(match["model"], {"model": match["model"]})
        median = (entry.get("stats") or {}).get("median")
        row[f"{kind}_ms"] = float(median) * 1000 if median is not None else math.nan
        extra = entry.get("extra_info") or {}
        if extra.get("params") is not None:
            row["params"] = float(extra["params"])
        if extra.get("flops_per_s") is not None:
            row[f"{kind}_gflop_per_s"] = float(extra["flops_per_s"]) / 1e9
    frame = pd.DataFrame(sorted(rows.values(), key=lambda r: r["model"]))
    if frame.empty:
        return frame
    # forward / train_step first, in a fixed order; other kinds after.
    found = {c.removesuffix("_ms") for c in frame.columns if c.endswith("_ms")}
    kinds = [k for k in _BENCH_KINDS if k in found] + sorted(found - set(_BENCH_KINDS))
    ordered = ["model", "params"] + [f"{k}{suffix}" for k in kinds for suffix in ("_ms", "_gflop_per_s")]
    return frame[[c for c in ordered if c in frame.columns]]


# ---------------------------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    """A number with fixed decimals; ``–`` for NaN, ``inf`` for infinity, text as is."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, str):
        return value
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def fmt_count(value: Any) -> str:
    """Large counts with thousands separators (parameters)."""
    if value is None or pd.isna(value):  # NaN, or pd.NA: the nullable count of a model without a done job
        return "–"
    return f"{int(round(float(value))):,}"


def _best_rows(values: pd.Series, higher_is_better: bool) -> list[int]:
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    finite = numeric[np.isfinite(numeric)]
    if len(finite) < 2:
        return []  # nothing to compare against
    target = finite.max() if higher_is_better else finite.min()
    return [i for i, v in enumerate(numeric) if v == target]


@dataclass(frozen=True)
class _Column:
    """One leaderboard column: header, how a summary.csv row becomes its cell, and which value marks the best."""

    header: str
    cell: Callable[[pd.Series], str]
    best_of: str | None = None  # summary.csv column compared across models; None = not highlighted
    higher_is_better: bool = True


def _number(column: str, digits: int | str) -> Callable[[pd.Series], str]:
    if digits == "count":
        return lambda r: fmt_count(r[column])
    return lambda r: fmt(r[column], digits)


def _pair(left: Any, right: Any, digits: int | str, separator: str) -> str:
    """Two numbers in one cell (``mean ± sd``, ``low–high``); a single ``–`` when neither is known."""
    if pd.isna(left) and pd.isna(right):
        return "–"
    return f"{fmt(left, digits)}{separator}{fmt(right, digits)}"


def _metric_columns(metric: Metric) -> list[_Column]:
    """The leaderboard columns of one metric: its statistics, ``mean ± sd`` in one cell when both are shown."""
    star = "" if metric.miss_penalty is None else "*"
    unit = f" ({metric.unit})" if metric.unit else ""
    name, digits, higher = metric.name, metric.digits, metric.higher_is_better
    columns = []
    for statistic in metric.leaderboard:
        if statistic == "ci":
            columns.append(
                _Column(
                    f"{metric.label} 95% CI",
                    lambda r: _pair(r[name + "_ci_low"], r[name + "_ci_high"], digits, "–"),
                )
            )
        elif statistic == "mean" and "sd" in metric.leaderboard:
            columns.append(_Column(f"{metric.label} mean{star} ± sd{unit}",
                                   lambda r: _pair(r[name + "_mean"], r[name + "_sd"], digits, " ± "),
                                   f"{name}_mean", higher))  # fmt: skip
        elif statistic != "sd" or "mean" not in metric.leaderboard:
            best = None if statistic == "sd" else f"{name}_{statistic}"
            columns.append(_Column(f"{metric.label} {statistic}{star}{unit}", _number(f"{name}_{statistic}", digits),
                                   best, higher))  # fmt: skip
    return columns


# Memory measures of jobs.csv: (column, leaderboard header, what it is). The first is exact and device-independent:
# the one best values and the memory Pareto plot use.
MEMORY_MEASURES = (
    ("tensor_peak_mb", "tensor peak (MiB)",
     "exact peak of live tensors in one training step (weights, gradients, optimiser state, activations, temporaries; "
     "the same on CPU and GPU)"),
    ("peak_rss_mb", "RSS peak (MiB)",
     "resident memory of the job's process tree on the host (job process + data-loader workers, runtime included)"),
    ("peak_gpu_mem_allocated_mb", "CUDA allocated peak (MiB)", "torch.cuda.max_memory_allocated of training"),
    ("peak_gpu_mem_reserved_mb", "CUDA reserved peak (MiB)", "torch.cuda.max_memory_reserved of training"),
)  # fmt: skip
RANGE_TOLERANCE = 0.05  # a model's jobs differing by more than this share show as a range "min–max"


def memory_cell(column: str) -> Callable[[pd.Series], str]:
    """Cell of a memory measure: the model's value, or ``min–max`` when its jobs differ by more than 5 %."""

    def cell(r: pd.Series) -> str:
        high, low = r.get(column, math.nan), r.get(f"{column}_min", math.nan)
        if pd.notna(high) and pd.notna(low) and high - low > RANGE_TOLERANCE * low:
            return f"{fmt(low, 0)}–{fmt(high, 0)}"
        return fmt(high, 0)

    return cell


_PLOT_LABELS = {
    "tensor_peak_mb": "peak tensor memory of a training step (MiB)",
    "peak_gpu_mem_allocated_mb": "CUDA peak allocated memory (MiB)",
    "peak_rss_mb": "peak RSS of the job's processes (MiB)",
}


def memory_measure(board: pd.DataFrame) -> tuple[str, str]:
    """(column, axis label) of the memory measure a plot of ``board`` uses: the tensor peak when measured, else the
    CUDA allocated peak, else the RSS peak (run directories from before the tensor peak existed)."""
    for column, label in _PLOT_LABELS.items():
        if column in board and pd.to_numeric(board[column], errors="coerce").notna().any():
            return column, label
    return "tensor_peak_mb", _PLOT_LABELS["tensor_peak_mb"]


# Costs measured on the job's hardware: compared (best marked) only when every model's jobs ran on the same one.
# The tensor peak is exact and device-independent; RSS and CUDA peaks are shown but never marked best.
HARDWARE_COSTS = ("train_iters_per_s", "inference_seconds_per_case", "train_seconds")

# Costs (from done jobs): (header, summary.csv column = jobs.csv quantity, digits or "count", higher is better).
_COST_COLUMNS = (
    ("params", "params", "count", False),
    ("forward MFLOP/voxel", "mflop_per_voxel", 2, False),
    ("train it/s", "train_iters_per_s", 2, True),
    ("infer s/case", "inference_seconds_per_case", 2, False),
    ("train s/fold", "train_seconds", 0, False),
)


def leaderboard_columns(board: pd.DataFrame) -> list[_Column]:
    """Quality columns after ``model, cases, jobs done``: every catalogue metric in ``board``, then ``misses``."""
    present = [m for m in metric_catalogue() if m.leaderboard and set(statistic_columns(m)) <= set(board.columns)]
    return [c for m in present for c in _metric_columns(m)] + [_Column("misses", _number("misses", "count"), "misses",
                                                                       False)]  # fmt: skip


def cost_columns(board: pd.DataFrame) -> list[_Column]:
    """The cost table's columns after ``model``: parameters, FLOPs, the memory measures, speed (done jobs)."""
    columns = []
    for header, column, digits, higher in _COST_COLUMNS:
        columns.append(_Column(header, _number(column, digits), column, higher))
        if column == "mflop_per_voxel":  # the memory measures next to the compute cost
            columns += _memory_columns(board)
    return columns


def _memory_columns(board: pd.DataFrame) -> list[_Column]:
    """The tensor peak (best value marked) and, unmarked, each other memory measure the run has values for."""
    columns = []
    for index, (column, header, _) in enumerate(MEMORY_MEASURES):
        measured = column in board and pd.to_numeric(board[column], errors="coerce").notna().any()
        if index == 0 or measured:
            columns.append(_Column(header, memory_cell(column), column if index == 0 else None, False))
    return columns


def _board_table(board: pd.DataFrame, lead: list[tuple[str, Callable[[pd.Series], str]]], spec: list[_Column]) -> Table:
    """Cells of a per-model table: ``lead`` columns, then ``spec``; best value per column marked (ties all marked).

    Quality columns show ``–`` for models without evaluated cases and are marked only among complete models
    (evaluated on every case), so models evaluated on different case sets are never marked against each other.
    Hardware-dependent costs (:data:`HARDWARE_COSTS`) are marked only when every model's jobs ran on the same hardware.
    """
    has_cases = board["cases"] > 0 if not board.empty else pd.Series(dtype=bool)
    complete = board["complete"].astype(bool) if "complete" in board else pd.Series(True, index=board.index)
    hardware = {h for h in board.get("hardware", pd.Series(dtype=str)).fillna("") if h}
    same_hardware = len(hardware) <= 1 and not any("," in h for h in hardware)
    rows = []
    for _, r in board.iterrows():
        cells = [cell(r) for _, cell in lead]
        rows.append(tuple(cells + [c.cell(r) if r["cases"] > 0 or c.best_of in _COSTS else "–" for c in spec]))
    best = set()
    for offset, column in enumerate(spec):
        if column.best_of is None or board.empty or (column.best_of in HARDWARE_COSTS and not same_hardware):
            continue
        eligible = pd.Series(True, index=board.index) if column.best_of in _COSTS else has_cases & complete
        values = board[column.best_of].where(eligible.to_numpy())
        for row in _best_rows(values, column.higher_is_better):
            best.add((row, len(lead) + offset))
    return Table(tuple(h for h, _ in lead) + tuple(c.header for c in spec), tuple(rows), frozenset(best))


_COSTS = frozenset([column for _, column, _, _ in _COST_COLUMNS] + [column for column, *_ in MEMORY_MEASURES])


def _model_cell(r: pd.Series) -> str:
    whole = bool(r["complete"]) if "complete" in r and not pd.isna(r["complete"]) else True
    kind = _kind(r)
    return str(r["model"]) + ("" if kind == "trained" else f" ({kind})") + ("" if whole else " (incomplete)")


def _kind(r: pd.Series) -> str:
    """``"trained"``, or for a row without jobs (segbench.extra_models) ``"ensemble"`` / ``"external"``."""
    return str(r["kind"]) if "kind" in r and isinstance(r["kind"], str) else "trained"


def _jobs_cell(r: pd.Series) -> str:
    return f"{int(r['jobs_done'])}/{int(r['jobs'])}" if _kind(r) == "trained" else "–"


def format_leaderboard(board: pd.DataFrame) -> Table:
    """Leaderboard quality cells (metrics and misses); incomplete models, ensembles and external rows say so next to
    their name."""
    lead = [("model", _model_cell), ("cases", lambda r: str(int(r["cases"]))), ("jobs done", _jobs_cell)]
    return _board_table(board, lead, leaderboard_columns(board))


def format_costs(board: pd.DataFrame) -> Table:
    """The leaderboard's cost cells (one row per model, same order); best value per column marked."""
    return _board_table(board, [("model", lambda r: str(r["model"]))], cost_columns(board))


def format_fold_table(table: pd.DataFrame, grid: pd.DataFrame, *, digits: int = 3) -> Table:
    """Per-fold cells; a fold without cases shows its job status (``failed``, ``missing``, …) instead."""
    fold_columns = [c for c in table.columns if c.startswith("fold_")]
    columns = ("model",) + tuple(c.replace("_", " ") for c in fold_columns) + ("mean of fold means", "pooled mean")
    status: dict[tuple[str, int], str] = {}
    for m, f, s in zip(grid["model"], grid["fold"], grid["status"], strict=True):
        # With repeats, a fold shows the first status that is not done (any repeat).
        if status.get((m, int(f)), "done") == "done":
            status[(m, int(f))] = s
    rows = []
    for model, r in table.iterrows():
        cells = [str(model)]
        for column in fold_columns:
            fold = int(column.removeprefix("fold_"))
            value = r[column]
            job_status = status.get((str(model), fold), MISSING)
            if pd.isna(value):
                cells.append(job_status if job_status != "done" else "no cases")
            else:
                cells.append(fmt(value, digits) + ("" if job_status == "done" else f" ({job_status})"))
        cells += [fmt(r["mean_of_folds"], digits), fmt(r["pooled"], digits)]
        rows.append(tuple(cells))
    return Table(columns, tuple(rows))


def format_jobs(grid: pd.DataFrame) -> Table:
    """Jobs that are not ``done`` (failed, diverged, oom, killed, timeout, missing) with their reason."""
    bad = grid[grid["status"] != "done"]
    if "repeat" in grid and grid["repeat"].nunique() > 1:
        selected = bad[["model", "fold", "repeat", "status", "reason"]].itertuples(index=False)
        rows = tuple((str(m), str(int(f)), str(int(r)), str(s), str(why)) for m, f, r, s, why in selected)
        return Table(("model", "fold", "repeat", "status", "reason"), rows)
    rows = tuple((str(m), str(int(f)), str(s), str(r)) for m, f, s, r in bad[["model", "fold", "status", "reason"]]
                 .itertuples(index=False))  # fmt: skip
    return Table(("model", "fold", "status", "reason"), rows)


def format_speed(speed: pd.DataFrame) -> Table:
    """pytest-benchmark speed table: median ms per step and achieved GFLOP/s per model."""
    if speed.empty:
        return Table(("model",), ())
    headers = []
    for column in speed.columns:
        if column.endswith("_ms"):
            headers.append(f"{column.removesuffix('_ms').replace('_', ' ')} median (ms)")
        elif column.endswith("_gflop_per_s"):
            headers.append(f"{column.removesuffix('_gflop_per_s').replace('_', ' ')} GFLOP/s")
        else:
            headers.append(column)
    rows = []
    for _, r in speed.iterrows():
        cells = []
        for column in speed.columns:
            if column == "model":
                cells.append(str(r[column]))
            elif column == "params":
                cells.append(fmt_count(r[column]))
            else:
                cells.append(fmt(r[column], 2))
        rows.append(tuple(cells))
    best = set()
    for index, column in enumerate(speed.columns):
        if column.endswith("_ms") or column.endswith("_gflop_per_s"):
            for row in _best_rows(speed[column], column.endswith("_gflop_per_s")):
                best.add((row, index))
    return Table(tuple(headers), tuple(rows), frozenset(best))
