"""`segbench report`: leaderboard, paired statistics, figures and provenance of a run directory.

Entry point :func:`write_report`. It reads a run directory (docs/run-directory.md) and writes::

    REPORT_DIR/
      report.md        Markdown, figures linked from figures/
      report.html      one self-contained page (inline CSS, base64 figures, no scripts)
      summary.csv      the leaderboard as numbers
      figures/*.png

Everything is deterministic (seeded bootstraps, fixed figure sizes, no timestamps), so regenerating a
report from the same run directory gives identical files.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segbench import rundir
from segbench.atomic import atomic_write_bytes, atomic_write_text
from segbench.errors import ConfigError, RunDirectoryError
from segbench.extra_models import extra_metrics, load_extra_models
from segbench.held_out import load_test_metrics
from segbench.metrics import PRIMARY_METRIC, Metric, metric_catalogue
from segbench.report import figures, stats, tables
from segbench.report.estimate import estimate_section
from segbench.report.held_back import held_back_section
from segbench.report.leaderboard_links import leaderboard_links
from segbench.report.matching import matching_record, matching_section, qualify_sentence
from segbench.report.per_label import per_label_section
from segbench.report.postprocessing import RULE_SENTENCE, before_after_table, decision_table, decisions_from
from segbench.report.recipe import recipe_sentence
from segbench.report.render import (
    Bullets,
    Code,
    FigureBlock,
    Links,
    Paragraph,
    Report,
    Section,
    TableBlock,
    render_html,
    render_markdown,
)
from segbench.results import (
    jobs_table,
    load_jobs,
    load_learning_curves,
    load_manifest,
    load_metrics,
    load_postprocessed_metrics,
    metrics_table,
    scan_results,
)
from segbench.rundir import JOBS_FILE, MANIFEST_FILE, METRICS_FILE, PLANS_FILE, RESULT_FILE, SPLITS_FILE

__all__ = [
    "compare_all_pairs",
    "compare_models",
    "metric_definitions",
    "RunContext",
    "read_run",
    "verdict_sentences",
    "write_report",
]

log = logging.getLogger(__name__)

_SURFACES = (
    "Surfaces are boundary voxels: foreground voxels with a 6-connected background neighbour (outside the image "
    "counts as background). Distances are in millimetres using the voxel spacing."
)
_POLICIES = (
    "Empty masks: both empty → Dice 1, distances 0, NSD 1. Exactly one empty (a miss) → Dice 0, NSD 0, distances "
    "infinite. Means and medians marked * count a miss as the metric's stated penalty: for distances the case's "
    "image diagonal in mm.",
    "Multi-label tasks: each case's value is the mean over its foreground labels; a case is a miss when any label is.",
    "Statistics: 95% confidence intervals are percentile bootstraps over cases (10,000 resamples, seed 0). Each "
    "model is compared with the best one (highest mean Dice) by a two-sided Wilcoxon signed-rank test on the cases "
    "both have (each case's value is its mean over repeats; zero differences are not tested and are counted "
    "separately), Holm-corrected over the comparisons of one metric. Verdict rule (docs/validity.md): with one "
    "repeat, 'A beats B' when the corrected case test gives p < 0.05, the ranks favour A as the mean does and the "
    "bootstrap CI of the mean difference excludes 0 ('mixed evidence' when the test and the CI disagree); with two "
    "or more repeats, additionally a two-sided Wilcoxon signed-rank test over the independently trained (fold, "
    "repeat) networks (each one's mean difference on its fold's cases), Holm-corrected the same way, must give "
    "p < 0.05 in the same direction.",
)


def metric_definitions() -> tuple[str, ...]:
    """The report's definitions: surfaces, one line per catalogue metric, the empty-mask and statistics policies."""
    lines = []
    for metric in metric_catalogue():
        unit = f" ({metric.unit})" if metric.unit else ""
        penalty = metric.miss_penalty
        note = f" A miss counts as {penalty:g} in means and medians." if isinstance(penalty, int | float) else ""
        lines.append(f"{metric.label}{unit} = {metric.definition or metric.name}{note}")
    return (_SURFACES, *lines, *_POLICIES)


@dataclass(frozen=True)
class _Inputs:
    manifest: dict[str, Any]
    splits: list[dict[str, Any]] | None
    metrics: pd.DataFrame
    jobs: pd.DataFrame
    curves: pd.DataFrame
    notes: tuple[str, ...]
    postprocessed: pd.DataFrame  # metrics_postprocessed.csv (empty when the run has none)
    decisions: dict[str, Any]  # model → Decision, from postprocessing.json
    extras: tuple[Any, ...] = ()  # ExtraModel rows without jobs (ensembles, external predictions), in both tables


def _read_inputs(run_dir: Path) -> _Inputs:
    if not rundir.manifest_path(run_dir).is_file():
        raise RunDirectoryError(
            f"{rundir.manifest_path(run_dir)} not found; pass the RUN_DIR folder written by `segbench run`"
        )
    try:
        manifest = load_manifest(run_dir)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(
            f"{rundir.manifest_path(run_dir)} is not valid JSON ({exc}); rerun `segbench run` to rewrite it"
        ) from None
    notes: list[str] = []
    splits = None
    try:
        splits = json.loads(rundir.splits_path(run_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{SPLITS_FILE} is missing: the expected fold count comes from the manifest config.")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        notes.append(f"{SPLITS_FILE} is unreadable ({exc}): the expected fold count comes from the manifest config.")
    scan = None
    if rundir.metrics_path(run_dir).is_file():
        metrics = load_metrics(run_dir)
    else:
        scan = scan_results(run_dir)
        metrics = metrics_table(scan.results)
        notes.append(f"{METRICS_FILE} is missing: per-case metrics were read from the jobs' {RESULT_FILE} files.")
    if rundir.jobs_table_path(run_dir).is_file():
        jobs = load_jobs(run_dir)
    else:
        scan = scan or scan_results(run_dir)
        jobs = jobs_table(scan.results)
        notes.append(f"{JOBS_FILE} is missing: job statuses were read from the jobs' {RESULT_FILE} files.")
    if scan is not None:
        notes += scan.problems
    if not jobs.empty:
        jobs["model"] = jobs["model"].astype(str)
        jobs["reason"] = jobs["reason"].astype(object).fillna("").astype(str) if "reason" in jobs else ""
    from segbench.run_postprocessing import load_decisions

    decisions = decisions_from(load_decisions(run_dir))
    postprocessed = load_postprocessed_metrics(run_dir)
    extras = tuple(load_extra_models(run_dir))
    if extras:  # rows without jobs enter every table and statistic as the trained models do
        metrics = _concat(metrics, extra_metrics(run_dir, extras))
        postprocessed = _concat(postprocessed, extra_metrics(run_dir, extras, postprocessed=True))
        decisions.update({extra.name: extra.decision for extra in extras})
    return _Inputs(manifest, splits, metrics, jobs, load_learning_curves(run_dir), tuple(notes), postprocessed,
                   decisions, extras)  # fmt: skip


def _concat(table: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    return more.copy() if table.empty else table if more.empty else pd.concat([table, more], ignore_index=True)


def _expected_folds(inputs: _Inputs) -> int:
    if isinstance(inputs.splits, list):
        return len(inputs.splits)
    folds = (inputs.manifest.get("config") or {}).get("folds")
    if isinstance(folds, int):
        return folds
    return int(inputs.jobs["fold"].max()) + 1 if not inputs.jobs.empty else 0


def _expected_models(inputs: _Inputs) -> list[str]:
    models = inputs.manifest.get("models") or (inputs.manifest.get("config") or {}).get("models") or []
    if isinstance(models, str):
        models = [m for m in models.split(",") if m]
    return [str(m) for m in models]


def _wide(per_case: pd.DataFrame, column: str, models: list[str]) -> pd.DataFrame:
    # Cases as rows, models as columns; the fold is dropped (each case is out-of-fold exactly once per model) and
    # repeats are averaged.
    wide = per_case.pivot_table(index="case_id", columns="model", values=column, aggfunc="mean")
    return wide.reindex(columns=[m for m in models if m in wide.columns])


def _long_pair(per_case: pd.DataFrame, column: str, reference: str, other: str) -> pd.DataFrame:
    """One row per (case_id, fold, repeat) with the two models' values as ``ref`` and ``other`` (NaN if absent)."""
    wide = per_case[per_case["model"].isin([reference, other])].pivot_table(
        index=["case_id", "fold", "repeat"], columns="model", values=column, aggfunc="mean"
    )
    wide = wide.reindex(columns=[reference, other])
    return wide.set_axis(["ref", "other"], axis=1).reset_index()


def _statistic_name(metric: Metric) -> str:
    """What a comparison of ``metric`` is a difference of, named as in the leaderboard (``*`` = penalised)."""
    return "mean" if metric.miss_penalty is None else "penalised mean"


def _headline_metrics(per_case: pd.DataFrame) -> list[Metric]:
    """Metrics with per-fold tables, paired tests and rank stability (:attr:`Metric.headline`), in catalogue order."""
    return [metric for metric in tables.metrics_in(per_case) if metric.headline]


def _compare(per_case: pd.DataFrame, metric: Metric, reference: str, other: str, seed: int) -> stats.Comparison:
    """One paired comparison of ``other`` against ``reference`` on ``metric``'s penalised values (no Holm yet)."""
    return stats.repeated_comparison(
        _long_pair(per_case, metric.penalised_column, reference, other),
        metric=metric.label,
        reference_name=reference,
        other_name=other,
        higher_is_better=metric.higher_is_better,
        unit=metric.unit,
        seed=seed,
        statistic_name=_statistic_name(metric),
    )


def compare_models(per_case: pd.DataFrame, best: str, models: list[str], seed: int = 0) -> list[stats.Comparison]:
    """Every model against ``best`` on each headline metric, Holm-corrected per metric (the report's verdicts).

    Args:
        per_case: :func:`segbench.report.tables.per_case_table` rows (one per model, fold, repeat, case).
        best: the reference model; models: the others (in order; ``best`` itself is skipped).
        seed: bootstrap seed.
    """
    results = []
    present = set(per_case["model"])
    for metric in _headline_metrics(per_case):
        family = [
            _compare(per_case, metric, best, other, seed) for other in models if other != best and other in present
        ]
        results += stats.with_holm(family)
    return results


def compare_all_pairs(
    per_case: pd.DataFrame, models: list[str], metric: Metric, seed: int = 0
) -> list[stats.Comparison]:
    """Every pair of ``models`` on ``metric`` with the report's tests and verdict rule, Holm-corrected over all pairs.

    The leaderboard's test-then-rank counts each model's ``beats`` verdicts among these. Models without a row in
    ``per_case`` are skipped; the pairs are in the order of ``models`` (first model as the reference).
    """
    present = [m for m in models if m in set(per_case["model"])]
    family = [_compare(per_case, metric, a, b, seed) for i, a in enumerate(present) for b in present[i + 1 :]]
    return stats.with_holm(family)


def verdict_sentences(manifest: dict[str, Any], comparisons: list[stats.Comparison]) -> tuple[str, ...]:
    """The report's sentence for each comparison (with the --match qualification of a matched run)."""
    record = matching_record(manifest)
    return tuple(qualify_sentence(stats.comparison_sentence(c), record, c.reference, c.other) for c in comparisons)


def _comparison_table(comparisons: list[stats.Comparison]) -> tables.Table:
    repeated = any(c.repeats > 1 for c in comparisons)
    rows = []
    for c in comparisons:
        digits = 3 if not c.unit else 2
        low, high = (c.ci_low, c.ci_high) if c.mean_diff >= 0 else (-c.ci_high, -c.ci_low)
        row = [c.metric, c.winner, c.loser, str(c.n_tested), str(c.n_zero), tables.fmt(abs(c.mean_diff), digits),
               f"{tables.fmt(low, digits)} to {tables.fmt(high, digits)}", tables.fmt(c.statistic, 1),
               stats.p_cell(c.p_value), stats.p_cell(c.p_holm)]  # fmt: skip
        if repeated:
            row += [f"{c.repeat_wins}/{c.repeats}", stats.p_cell(c.job_p_holm)]
        rows.append((*row, c.verdict))
    columns = ["metric", "better", "worse", "cases tested", "zero diffs", "advantage", "95% CI", "W", "p", "p (Holm)"]
    if repeated:
        columns += ["repeats ahead", "job-level p (Holm)"]
    return tables.Table((*columns, "verdict"), tuple(rows))


def _median_case(per_case: pd.DataFrame, model: str) -> tuple[str, int, float] | None:
    cases = per_case[(per_case["model"] == model) & per_case["dice"].notna()]
    if cases.empty:
        return None
    ordered = cases.sort_values(["dice", "case_id"], kind="stable").reset_index(drop=True)
    row = ordered.iloc[(len(ordered) - 1) // 2]  # lower median: an actual case, never an average of two
    return str(row["case_id"]), int(row["fold"]), float(row["dice"])


def _prediction_path(run_dir: Path, model: str, fold: int, case_id: str, repeats: int = 1) -> Path:
    # With repeats, the panel shows repeat 0's prediction.
    folder = rundir.predictions_dir(run_dir, rundir.JobKey(model, fold, 0, repeats)).resolve()
    path = (folder / f"{case_id}{rundir.PREDICTION_SUFFIX}").resolve()
    if folder not in path.parents:
        raise ValueError(f"case id {case_id!r} does not name a file inside {folder}")
    return path


def _panel_path(
    run_dir: Path, manifest: dict[str, Any], per_case: pd.DataFrame, model: str, case_id: str, *, extra: bool
) -> Path | None:
    """The prediction file of ``case_id`` the panel shows for ``model`` (``None`` when it has no row for the case)."""
    if extra:
        return rundir.extra_prediction_path(run_dir, model, case_id)
    rows = per_case[(per_case["model"] == model) & (per_case["case_id"] == case_id)]
    repeats = int((manifest.get("config") or {}).get("repeats") or 1)
    return _prediction_path(run_dir, model, int(rows["fold"].iloc[0]), case_id, repeats) if len(rows) else None


def _qualitative(
    run_dir: Path, inputs: _Inputs, per_case: pd.DataFrame, best: str, models: list[str]
) -> tuple[bytes | None, str]:
    """The panel PNG and a caption, or ``None`` and the reason it was skipped."""
    manifest, extras = inputs.manifest, {extra.name for extra in inputs.extras}
    chosen = _median_case(per_case, best)
    if chosen is None:
        return None, f"Qualitative panel skipped: {best} has no evaluated case."
    case_id, _, dice = chosen
    dataset_path = (manifest.get("dataset") or {}).get("path")
    # The panel is an illustration: any failure to read the data (moved dataset, reader missing, damaged
    # file) becomes a note in the report instead of aborting the whole report.
    try:
        from segbench.data.dataset import load_case, load_dataset
        from segbench.data.nifti import read_label

        spec = load_dataset(dataset_path)
        case = next((c for c in spec.training if str(c.case_id) == case_id), None)
        if case is None:
            return None, f"Qualitative panel skipped: case {case_id} is not in the dataset at {dataset_path}."
        image, label = load_case(case)
        predictions, missing = {}, []
        for model in models:
            path = _panel_path(run_dir, manifest, per_case, model, case_id, extra=model in extras)
            if path is not None and path.is_file():
                predictions[model] = read_label(path).array
            else:
                missing.append(model)
        png = figures.qualitative_panel(image.array[0], label.array, predictions, spacing=image.spacing,
                                        title=f"{case_id} (median {best} Dice {dice:.3f})", models=models)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - see comment above
        return None, f"Qualitative panel skipped: the dataset at {dataset_path} could not be read ({exc})."
    caption = f"Median case of {best} by Dice ({case_id}, Dice {dice:.3f}): reference (white) and each model's contour"
    if missing:
        caption += f"; no prediction file for {', '.join(missing)}"
    return png, caption + "."


def _read_benchmarks(path: Path) -> pd.DataFrame:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return tables.speed_table(data)
    except FileNotFoundError:
        raise ConfigError(f"--benchmarks {path} does not exist; pass a pytest-benchmark JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(
            f"--benchmarks {path} is not a pytest-benchmark JSON file ({exc}); create one with "
            "`pytest benchmarks --benchmark-json FILE.json`"
        ) from None


def _plans_line(plans: Any) -> tuple[str, ...]:
    """The provenance line of a run with ``--plans`` (none without)."""
    if not isinstance(plans, dict):
        return ()
    return (
        f"plans: {plans.get('path', '–')} (configuration {plans.get('configuration', '–')}, "
        f"{plans.get('plans_name') or 'plans'} for {plans.get('dataset_name') or '–'}, SHA-256 "
        f"{str(plans.get('sha256', '–'))[:16]}…; copied to {PLANS_FILE})",
    )


def _provenance(inputs: _Inputs) -> list[Any]:
    manifest = inputs.manifest
    dataset = manifest.get("dataset") or {}
    environment = manifest.get("environment") or {}
    blocks: list[Any] = [
        Bullets(
            (
                f"command: {manifest.get('command', '–')}",
                f"segbench version: {manifest.get('segbench_version', '–')}",
                f"created at: {manifest.get('created_at', '–')}",
                f"dataset: {dataset.get('name', '–')} ({dataset.get('format', '–')}) at {_dataset_place(manifest)}, "
                f"{dataset.get('num_training', '–')} training cases, fingerprint {dataset.get('fingerprint', '–')}",
                f"labels: {json.dumps(dataset.get('labels', {}), sort_keys=True, ensure_ascii=False)}",
                *_plans_line(manifest.get("plans")),
            )
        ),
        TableBlock(
            tables.Table(("key", "value"), tuple((str(k), _plain(v)) for k, v in sorted(environment.items()))),
            "Environment",
        ),
        Paragraph(f"Configuration ({MANIFEST_FILE} `config`):"),
        Code(json.dumps(manifest.get("config", {}), indent=2, sort_keys=True, ensure_ascii=False, default=str)),
    ]
    if isinstance(inputs.splits, list):
        rows = []
        for fold, split in enumerate(inputs.splits):
            val = [str(v) for v in (split.get("val") or [])] if isinstance(split, dict) else []
            train = split.get("train") or [] if isinstance(split, dict) else []
            rows.append((str(fold), str(len(train)), str(len(val)), ", ".join(val)))
        blocks.append(TableBlock(tables.Table(("fold", "train cases", "val cases", "val case ids"), tuple(rows)),
                                 f"Splits ({SPLITS_FILE})"))  # fmt: skip
    blocks.append(Paragraph("Metric definitions:"))
    blocks.append(Bullets(metric_definitions()))
    return blocks


def _dataset_place(manifest: dict[str, Any]) -> str:
    """Where the dataset was, without a machine's cache or home folder: a report may be shared or committed."""
    path = str((manifest.get("dataset") or {}).get("path") or "–")
    if "data" in (manifest.get("config") or {}) and manifest["config"]["data"] is None:
        return f"segbench's embedded synthetic dataset (generated on first use into the cache as {Path(path).name})"
    task = (manifest.get("dataset") or {}).get("task")  # recorded by the run for --data synth:NAME
    if task:
        return f"segbench's embedded synthetic task {task} (generated on first use into the cache as {Path(path).name})"
    home = str(Path.home())
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + "/") else path


def _plain(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return str(value)


@dataclass(frozen=True)
class RunContext:
    """What every report section is built from: the inputs and the tables derived from them."""

    run_dir: Path
    inputs: _Inputs
    per_case: pd.DataFrame  # one row per (model, fold, case): values averaged over repeats
    per_repeat: pd.DataFrame  # one row per (model, fold, repeat, case)
    repeats: int
    grid: pd.DataFrame
    expected_models: list[str]
    models: list[str]
    n_folds: int
    board: pd.DataFrame
    ranked: list[str]
    seed: int

    @property
    def best(self) -> str | None:
        return self.ranked[0] if self.ranked else None


def read_run(run_dir: str | Path, *, seed: int = 0) -> RunContext:
    """The tables a report of ``run_dir`` is built from: per-case values, the leaderboard, the job grid, the ranking.

    Raises:
        RunDirectoryError: ``run_dir`` has no readable manifest.json.
    """
    run_dir = Path(run_dir)
    return _context(run_dir, _read_inputs(run_dir), seed)


def _expected_repeats(inputs: _Inputs, per_repeat: pd.DataFrame) -> int:
    repeats = (inputs.manifest.get("config") or {}).get("repeats")
    found = int(per_repeat["repeat"].max()) + 1 if not per_repeat.empty else 1
    return max(int(repeats), found) if isinstance(repeats, int) else found


def _context(run_dir: Path, inputs: _Inputs, seed: int) -> RunContext:
    per_repeat = tables.per_case_table(inputs.metrics)
    per_case = tables.case_means(per_repeat)
    repeats = _expected_repeats(inputs, per_repeat)
    expected_models = _expected_models(inputs)
    n_folds = _expected_folds(inputs)
    grid = tables.job_grid(inputs.jobs, models=expected_models, n_folds=n_folds, repeats=repeats)
    models = list(dict.fromkeys(list(grid["model"]) + sorted(set(per_case["model"]))))
    board = tables.leaderboard(per_case, inputs.jobs, models=models, seed=seed)
    if not board.empty:  # "jobs done k/n" counts the expected grid, also jobs that left no row in jobs.csv
        expected = grid.groupby("model").size()
        board["jobs"] = [int(expected.get(m, n)) for m, n in zip(board["model"], board["jobs"], strict=True)]
    if not board.empty:  # rows without jobs say what they are: "ensemble" or "external"
        kinds = {extra.name: extra.kind for extra in inputs.extras}
        board["kind"] = [kinds.get(m, "trained") for m in board["model"]]
    primary = f"{PRIMARY_METRIC}_mean"
    ranked = board[board[primary].notna()]["model"].tolist() if not board.empty else []
    return RunContext(run_dir, inputs, per_case, per_repeat, repeats, grid, expected_models, models, n_folds, board,
                    ranked, seed)  # fmt: skip


def _figures(ctx: RunContext) -> tuple[list[FigureBlock], list[str]]:
    """Box plots, Pareto fronts, learning curves and the qualitative panel; notes for what was skipped."""
    blocks: list[FigureBlock] = []
    for metric in tables.box_metrics(ctx.per_case):
        column, label = metric.penalised_column, _box_label(metric)
        png = figures.box_strip(ctx.per_case, column=column, label=label, models=ctx.models)
        blocks.append(FigureBlock(f"box_{column}.png", png, f"{label}: every out-of-fold case"))
    blocks += _pareto_figures(ctx)
    curves = figures.learning_curves(ctx.inputs.curves, models=ctx.models)
    blocks.append(FigureBlock("learning_curves.png", curves, "Training loss, mean over folds ± 1 sd"))
    notes = []
    if ctx.best is not None:
        panel, caption = _qualitative(ctx.run_dir, ctx.inputs, ctx.per_case, ctx.best, ctx.models)
        if panel is not None:
            blocks.append(FigureBlock("qualitative.png", panel, caption))
        else:
            notes.append(caption)
    return blocks, notes


def _box_label(metric: Metric) -> str:
    """``"HD95 (mm, misses = diagonal)"``: label, unit and the penalty a miss counts as."""
    details = [metric.unit] if metric.unit else []
    if isinstance(metric.miss_penalty, str):
        details.append(f"misses = {metric.miss_penalty}")
    elif metric.miss_penalty is not None:
        details.append(f"misses = {metric.miss_penalty:g}")
    return f"{metric.label} ({', '.join(details)})" if details else metric.label


def _pareto_figures(ctx: RunContext) -> list[FigureBlock]:
    board, blocks = ctx.board, []
    memory_column, memory_label = tables.memory_measure(board)
    for column, label, higher, name in (
        (memory_column, memory_label, False, "pareto_memory.png"),
        ("train_iters_per_s", "training throughput (it/s)", True, "pareto_throughput.png"),
    ):
        front = stats.pareto_front(board[column].to_numpy(float), board["dice_mean"].to_numpy(float),
                                   cost_higher_is_better=higher) if not board.empty else np.zeros(0, bool)  # fmt: skip
        png = figures.pareto(board, cost_column=column, cost_label=label, front=front, models=ctx.models)
        on_front = ", ".join(board["model"][front]) if front.any() else "none"
        blocks.append(FigureBlock(name, png, f"Mean Dice vs {label}; Pareto front: {on_front}"))
    return blocks


def _leaderboard_section(ctx: RunContext) -> Section:
    intro = Paragraph(
        f"{len(ctx.models) - len(ctx.inputs.extras)} models × {ctx.n_folds} folds"
        + (f" and {len(ctx.inputs.extras)} row(s) without jobs" if ctx.inputs.extras else "")
        + "; values pooled over each model's out-of-fold cases. "
        "Best value per column in bold. * = misses count as the stated penalty (distances: the image diagonal, mm). "
        "misses = cases where exactly one of prediction and reference is empty. "
        "A model without a finished job shows – (see Jobs). "
        + " ".join(f"{header.removesuffix(' (MiB)')}: {meaning}." for _, header, meaning in tables.MEMORY_MEASURES)
        + " Best memory in bold by the tensor peak; a range a–b: the model's jobs differ by more than 5 %."
    )
    costs = TableBlock(
        tables.format_costs(ctx.board),
        "Costs, from each model's done jobs (means; maxima for parameters and memory; the memory measures are "
        "defined above).",
    )
    recipe = Paragraph(recipe_sentence(ctx.inputs.manifest, ctx.inputs.jobs))
    extras: tuple[Any, ...] = ()
    if ctx.inputs.extras:
        extras = (Paragraph(f"Rows without jobs ({rundir.EXTRA_MODELS_DIR}/): scored on the run's cases with the same "
                            "metrics, postprocessing rule and statistics; they have no cost figures."),
                  Bullets(tuple(extra.describe() for extra in ctx.inputs.extras)))  # fmt: skip
    return Section("Leaderboard", (recipe, intro, *extras, TableBlock(tables.format_leaderboard(ctx.board)), costs))


def _fold_section(ctx: RunContext) -> Section:
    blocks = []
    # Rows without jobs have no job status: their folds count as done ("no cases" where a fold has none).
    extra = [{"model": e.name, "fold": k, "status": "done"} for e in ctx.inputs.extras for k in range(ctx.n_folds)]
    grid = pd.concat([ctx.grid, pd.DataFrame(extra)], ignore_index=True) if extra else ctx.grid
    for metric in _headline_metrics(ctx.per_case):
        table = tables.fold_table(ctx.per_case, models=ctx.models, n_folds=ctx.n_folds, metric=metric.penalised_column)
        caption = f"{metric.display()}: per-fold means, mean of fold means, pooled-case mean"
        blocks.append(TableBlock(tables.format_fold_table(table, grid, digits=metric.digits), caption))
    return Section("Per-fold results", tuple(blocks))


def _statistics_section(ctx: RunContext) -> Section:
    best = ctx.best
    if best is None or len(ctx.ranked) < 2:
        return Section("Statistics", (Paragraph("Paired statistics need at least two models with evaluated cases."),))
    headline = _headline_metrics(ctx.per_case)
    ranks = [
        stats.rank_stability(
            _wide(ctx.per_case, m.penalised_column, ctx.models), higher_is_better=m.higher_is_better, seed=ctx.seed
        )  # fmt: skip
        for m in headline
    ]
    rank_rows = tuple(
        (model, *(tables.fmt(rank.get(model, math.nan), 3) for rank in ranks)) for model in ranks[0].index
    ) if ranks else ()  # fmt: skip
    rank_columns = ("model", *(f"P(first) by {m.display(unit=False)}" for m in headline))
    return Section("Statistics", (
        Paragraph(f"Every model against the best by mean Dice ({best}); paired on case id. {_rule_sentence(ctx)} "
                  + recipe_sentence(ctx.inputs.manifest, ctx.inputs.jobs)),
        *_conditions(ctx),
        *_comparison_blocks(ctx, ctx.per_repeat, best),
        TableBlock(tables.Table(rank_columns, rank_rows),
                   f"Rank stability: share of {stats.RANK_RESAMPLES} case-bootstrap resamples (cases all models "
                   "have) in which the model ranks first"),
    ))  # fmt: skip


def _comparison_blocks(ctx: RunContext, per_repeat: pd.DataFrame, best: str) -> list[Any]:
    """The verdict sentences and the test table of every model against ``best`` on ``per_repeat``'s cases."""
    comparisons = compare_models(per_repeat, best, ctx.models, ctx.seed)
    return [
        Bullets(verdict_sentences(ctx.inputs.manifest, comparisons)),
        TableBlock(_comparison_table(comparisons), "Wilcoxon signed-rank tests (two-sided), Holm per metric; "
                   "'better' is the model ahead on the cases, 'advantage' its lead"),
    ]  # fmt: skip


def _postprocessing_section(ctx: RunContext) -> Section:
    """Each model's decision, its metrics before and after, and the paired statistics on the postprocessed cases."""
    decisions, blocks = ctx.inputs.decisions, [Paragraph(RULE_SENTENCE)]
    if not decisions:
        blocks.append(
            Paragraph(
                "No model has a postprocessing decision yet: it is made once all of a model's folds "
                "are done (`segbench run --resume --out RUN_DIR` makes it for a finished run)."
            )
        )
        return Section("Postprocessing", tuple(blocks))
    per_repeat = tables.per_case_table(ctx.inputs.postprocessed)
    per_case = tables.case_means(per_repeat)
    blocks += [
        TableBlock(decision_table(decisions, ctx.models), "Steps tried on the out-of-fold predictions, in order; "
                   "mean Dice of the step's label(s), nnU-Net's way"),
        TableBlock(before_after_table(ctx.per_case, per_case, decisions, ctx.models, seed=ctx.seed),
                   "Pooled out-of-fold cases before and after each model's postprocessing (* = misses count as the "
                   "stated penalty)"),
    ]  # fmt: skip
    undecided = [m for m in ctx.models if m not in decisions]
    if undecided:
        blocks.append(Paragraph(f"No decision for {', '.join(undecided)}: not all of its folds are done; it is left "
                                "out of the statistics below."))  # fmt: skip
    means = per_case.groupby("model")[PRIMARY_METRIC].mean().dropna() if not per_case.empty else pd.Series()
    ranked = sorted(means.index, key=lambda m: (-means[m], m))
    if len(ranked) < 2:
        return Section("Postprocessing", tuple(blocks))
    blocks.append(
        Paragraph(
            f"Statistics after postprocessing: every model against the best by mean Dice after "
            f"postprocessing ({ranked[0]}), with the tests and the verdict rule of Statistics."
        )
    )
    return Section("Postprocessing", (*blocks, *_comparison_blocks(ctx, per_repeat, ranked[0])))  # fmt: skip


def _rule_sentence(ctx: RunContext) -> str:
    if ctx.repeats < 2:
        return (
            "Verdict rule: 'A beats B' when the Holm-corrected case-level Wilcoxon test gives p < 0.05, the ranks "
            "favour A as the mean does, and the 95% CI of the mean difference excludes 0 ('mixed evidence' when the "
            "test and the CI disagree). "
            "Training-seed variance was not measured (one training seed per model and fold): the cases of one fold "
            "share one trained network, so a difference can be the luck of one seed — docs/validity.md measures how "
            "often this rule declares a winner between two copies of one architecture. For close results rerun with "
            "`--repeats 3`."
        )
    return (
        f"Verdict rule ({ctx.repeats} repeats): 'A beats B' only when the Holm-corrected case-level Wilcoxon test "
        "(each case's mean over repeats) gives p < 0.05 with the ranks and the 95% CI of the mean difference on "
        "A's side AND the difference is consistent across repeats: the "
        "Holm-corrected Wilcoxon test over the independently trained (fold, repeat) networks gives p < 0.05 in "
        "the same direction (docs/validity.md)."
    )


def _conditions(ctx: RunContext) -> list[Any]:
    """Warnings when the compared jobs ran on different hardware or precision (columns of jobs.csv, when present)."""
    jobs = ctx.inputs.jobs
    notes = []
    for column, what in (("hardware", "hardware"), ("precision", "numeric precision")):
        if jobs.empty or column not in jobs:
            continue
        done = jobs[(jobs["status"] == "done") & jobs["model"].isin(ctx.ranked)]
        values = sorted({str(v) for v in done[column].dropna()})
        if len(values) > 1:
            by_model = "; ".join(
                f"{m}: {', '.join(sorted({str(v) for v in g[column].dropna()}))}" for m, g in done.groupby("model")
            )
            notes.append(f"Warning: the compared jobs ran on different {what} ({by_model}); quality differences may "
                         "partly come from it, and cost columns are not compared across it.")  # fmt: skip
    return [Paragraph(note) for note in notes]


def _seed_section(ctx: RunContext) -> Section:
    """Training-seed variance: per model its mean Dice in each repeat, their SD and a repeat-level interval."""
    if ctx.repeats < 2:
        return Section("Training-seed variance", (Paragraph(
            "Not measured: this run trained one seed per model and fold (`--repeats 1`). Differences between models "
            "include the luck of one training seed; for close results rerun with `--repeats 3` (docs/validity.md)."
        ),))  # fmt: skip
    rows = []
    for model in ctx.ranked:
        means = ctx.per_repeat[ctx.per_repeat["model"] == model].groupby("repeat")[PRIMARY_METRIC].mean()
        low, high = stats.repeat_interval(means.to_numpy(float))
        sd = float(means.std(ddof=1)) if len(means) > 1 else math.nan
        rows.append((model, str(len(means)), ", ".join(tables.fmt(v, 3) for v in means),
                     tables.fmt(float(means.mean()), 3), tables.fmt(sd, 4),
                     f"{tables.fmt(low, 3)} to {tables.fmt(high, 3)}"))  # fmt: skip
    columns = ("model", "repeats", "mean Dice per repeat", "mean", "SD across repeats", "95% interval (t, repeats)")
    return Section("Training-seed variance", (
        Paragraph(f"{ctx.repeats} training seeds per model and fold (same splits, common random numbers across "
                  "models within a repeat). The interval is the t-interval of the mean over repeats."),
        TableBlock(tables.Table(columns, tuple(rows))),
    ))  # fmt: skip


def _speed_section(speed: pd.DataFrame, benchmark_json: Path) -> Section:
    return Section("Speed (pytest-benchmark)", (
        Paragraph(f"From {benchmark_json.name}: median time per call; best per column in bold."),
        TableBlock(tables.format_speed(speed)),
    ))  # fmt: skip


_MISSING_NOTE = (
    " A missing job never wrote a result: `segbench run --resume --out RUN_DIR` runs it, or continues it from its "
    "checkpoint."
)


def _jobs_section(ctx: RunContext, notes: list[str]) -> Section:
    grid, n_expected = ctx.grid, len(ctx.expected_models)
    n_jobs, n_done = n_expected * ctx.n_folds, int((grid["status"] == "done").sum())
    not_done = grid[grid["status"] != "done"]
    counts = ", ".join(f"{n} {status}" for status, n in not_done["status"].value_counts().sort_index().items())
    if not_done.empty:
        blocks: list[Any] = [Paragraph(f"All {n_done} jobs done ({n_expected} models × {ctx.n_folds} folds).")]
    else:
        blocks = [
            Paragraph(
                f"Expected grid: {n_expected} models × {ctx.n_folds} folds = {n_jobs} jobs; {n_done} done, "
                f"{len(not_done)} not done ({counts}), listed below with the reason."
                + (_MISSING_NOTE if (not_done["status"] == tables.MISSING).any() else "")
            ),
            TableBlock(tables.format_jobs(grid)),
        ]
    if notes:
        blocks += [Paragraph("Notes:"), Bullets(tuple(notes))]
    return Section("Jobs", tuple(blocks))


def _write_files(out: Path, report: Report, figure_blocks: list[FigureBlock], board: pd.DataFrame) -> Path:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for block in figure_blocks:
        atomic_write_bytes(out / "figures" / block.name, block.png)
    atomic_write_text(out / "summary.csv", board.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / "report.md", render_markdown(report))
    return atomic_write_text(out / "report.html", render_html(report))


def write_report(
    run_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    benchmark_json: str | Path | None = None,
    seed: int = 0,
) -> Path:
    """Write ``report.md``, ``report.html``, ``summary.csv`` and ``figures/*.png`` for a run directory.

    Args:
        run_dir: folder written by ``segbench run`` (manifest.json, splits.json, metrics.csv, jobs.csv, jobs/).
        out_dir: report folder (created); default ``RUN_DIR/report``.
        benchmark_json: optional pytest-benchmark JSON to include as a speed table.
        seed: seed of every bootstrap (CIs, rank stability).

    Returns:
        Path of the written ``report.html``.

    Raises:
        RunDirectoryError: ``run_dir`` has no readable manifest.json.
        ConfigError: ``benchmark_json`` is missing or not pytest-benchmark JSON.
        OSError: a report file could not be written (nothing half-written is left).
    """
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else rundir.report_dir(run_dir)
    speed = _read_benchmarks(Path(benchmark_json)) if benchmark_json is not None else None
    inputs = _read_inputs(run_dir)
    ctx = _context(run_dir, inputs, seed)
    figure_blocks, figure_notes = _figures(ctx)
    held_back = held_back_section(load_test_metrics(run_dir))  # apart from the folds: after their statistics
    per_label = per_label_section(inputs.metrics)  # multi-label runs: each label apart, after the leaderboard
    sections = [_leaderboard_section(ctx), *([per_label] if per_label else []), _fold_section(ctx),
                _statistics_section(ctx), _postprocessing_section(ctx), *([held_back] if held_back else []),
                _seed_section(ctx),
                Section("Figures", tuple(figure_blocks))]  # fmt: skip
    matched = matching_section(inputs.manifest, inputs.jobs, ctx.board, ctx.models)
    if matched is not None:  # a --match run: its costs and Pareto plots right after the leaderboard
        sections.insert(1, matched[0])
        figure_blocks += matched[1]
    links = leaderboard_links(run_dir, out)  # written by `segbench leaderboard` (RUN_DIR/leaderboards.json)
    if links:
        sections.insert(0, Section("Across datasets", (Links("Part of leaderboard", links),)))
    if speed is not None:
        sections.append(_speed_section(speed, Path(benchmark_json)))
    estimated = estimate_section(inputs.manifest, inputs.jobs)  # what the run said it would cost, and what it did
    sections += [*([estimated] if estimated is not None else []), _jobs_section(ctx, [*inputs.notes, *figure_notes]),
                 Section("Provenance", tuple(_provenance(inputs)))]  # fmt: skip
    dataset_name = (inputs.manifest.get("dataset") or {}).get("name") or run_dir.name
    html_path = _write_files(
        out, Report(f"segbench report — {dataset_name}", tuple(sections)), figure_blocks, ctx.board
    )
    log.info("report written to %s", out)
    return html_path
