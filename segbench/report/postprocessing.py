"""The report's postprocessing tables: each model's decision, step by step, and its metrics before and after.

Inputs are the run directory's stored decisions (``postprocessing.json``, :mod:`segbench.run_postprocessing`) and
the per-case tables (:func:`segbench.report.tables.per_case_table` then ``case_means``) of ``metrics.csv`` and
``metrics_postprocessed.csv``. The paired statistics on the postprocessed metrics are the report's own
(:func:`segbench.report.compare_models`), built where the other statistics are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from segbench.metrics import Metric
from segbench.postprocessing import Decision
from segbench.report.tables import Table, fmt, metric_statistics, metrics_in
from segbench.rundir import METRICS_POSTPROCESSED_FILE, POSTPROCESSING_FILE

RULE_SENTENCE = (
    "Postprocessing is decided on each model's out-of-fold predictions with nnU-Net's rule, the same for every model: "
    "first keep only the largest connected component of all foreground labels together (26-connectivity), accepted "
    "when the mean foreground Dice strictly rises and no label's Dice falls; then, with several labels, keep only each "
    "label's largest component, accepted when that label's Dice rises. The Dice of this rule is nnU-Net's: a case "
    "where a label is in neither prediction nor reference does not count in that label's mean. "
    f"Decisions are stored in {POSTPROCESSING_FILE}, the metrics of the postprocessed predictions (every done job) in "
    f"{METRICS_POSTPROCESSED_FILE}."
)


def decisions_from(stored: Mapping[str, Mapping[str, Any]]) -> dict[str, Decision]:
    """Model → :class:`Decision` of the stored entries that read back (malformed ones are left out)."""
    decisions = {}
    for model, entry in stored.items():
        try:
            decisions[model] = Decision.from_json(entry)
        except (KeyError, TypeError, ValueError):
            continue
    return decisions


def decision_table(decisions: Mapping[str, Decision], models: list[str]) -> Table:
    """One row per step tried: model, cases, step, accepted, mean Dice of the step's labels before and after."""
    rows = []
    for model in [m for m in models if m in decisions]:
        decision = decisions[model]
        for step in decision.steps:
            kind = "foreground" if step.kind == "foreground" else f"label {step.labels[0]}"
            before, after = _dice_cell(step.dice_before, step.labels), _dice_cell(step.dice_after, step.labels)
            outcome = "accepted" if step.accepted else "rejected"
            rows.append((model, str(decision.cases), f"largest {kind} component", outcome, before, after))
    columns = ("model", "cases", "step", "outcome", "Dice before", "Dice after")
    return Table(columns, tuple(rows))


def _dice_cell(dice: Mapping[int, float], labels: tuple[int, ...]) -> str:
    if len(labels) == 1:
        return fmt(dice.get(labels[0], math.nan), 4)
    return ", ".join(f"{label}: {fmt(dice.get(label, math.nan), 4)}" for label in labels)


def before_after_table(
    raw: pd.DataFrame, processed: pd.DataFrame, decisions: Mapping[str, Decision], models: list[str], *, seed: int = 0
) -> Table:
    """Per model with a decision: what it applies and each headline metric's (penalised) mean before → after.

    Args:
        raw, processed: per-case tables (one row per model, fold, case) of the raw and postprocessed predictions.
    """
    headline = [m for m in metrics_in(raw) if m.headline]
    rows = []
    for model in [m for m in models if m in decisions]:
        before = metric_statistics(raw[raw["model"] == model], seed=seed)
        after_cases = processed[processed["model"] == model]
        after = metric_statistics(after_cases, seed=seed)
        cells = [_change(before, after, metric) for metric in headline]
        misses = f"{int(raw[raw['model'] == model]['miss'].sum())} → {int(after_cases['miss'].sum())}"
        rows.append((model, decisions[model].describe(), str(len(after_cases)), *cells, misses))
    columns = ("model", "applied", "cases", *(f"{m.display()} before → after" for m in headline), "misses")
    return Table(columns, tuple(rows))


def _change(before: Mapping[str, float], after: Mapping[str, float], metric: Metric) -> str:
    key = f"{metric.name}_mean"
    return f"{fmt(before.get(key, math.nan), metric.digits)} → {fmt(after.get(key, math.nan), metric.digits)}"
