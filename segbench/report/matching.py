"""The report's "Compute matching" section: what ``--match`` did, each model's costs, and Pareto plots per cost.

Reads the ``matching`` record of ``manifest.json`` (written by :mod:`segbench.matching`) and the per-job costs of
``jobs.csv``. A run without ``--match`` gets no section, and its statistics sentences are unchanged; with it, every
paired-comparison sentence says whether the two models were compared at matched cost, e.g. "… at matched FLOPs
(±4.2%)", or which of them was not matched.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from segbench.report import figures, stats, tables
from segbench.report.render import Bullets, FigureBlock, Paragraph, Section, TableBlock

__all__ = ["cost_frame", "matching_lines", "matching_record", "matching_section", "qualify_sentence"]

# measure -> (name in sentences, jobs.csv column holding it, axis label)
MEASURES = {
    "params": ("parameters", "params", "parameters"),
    "flops": ("FLOPs", "mflop_per_voxel_train", "training MFLOP/voxel"),
    "memory": ("peak tensor memory", "tensor_peak_mb", "peak tensor memory (MiB)"),
}
_WHOSE = {  # "... the width whose <phrase> closest to the reference's"
    "params": "parameter count is",
    "flops": "training FLOPs per voxel are",
    "memory": "peak tensor memory in a training step is",
}


def matching_record(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's ``matching`` record if it is well formed, else None (a run without ``--match``)."""
    record = manifest.get("matching")
    if not isinstance(record, dict) or record.get("measure") not in MEASURES:
        return None
    if not isinstance(record.get("models"), list) or not isinstance(record.get("target"), int | float):
        return None
    return record


def _entries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Resolved model name -> its record entry (the first, when two requested names resolved to one model)."""
    entries: dict[str, dict[str, Any]] = {}
    for entry in record["models"]:
        if isinstance(entry, dict) and "model" in entry:
            entries.setdefault(str(entry["model"]), entry)
    return entries


def _at_target(record: dict[str, Any], entry: dict[str, Any] | None) -> bool:
    # The reference itself is at the target even when it is a fixed model that was not scaled.
    return entry is not None and (bool(entry.get("matched")) or entry.get("model") == record.get("reference"))


def matching_lines(record: dict[str, Any]) -> list[str]:
    """Plain lines for the terminal: the target, then ``requested -> trained (deviation)`` per selected model."""
    label = MEASURES[record["measure"]][0]
    lines = [f"Matched {label} to {record['reference']}: {record['target']:.4g} {record.get('unit', '')}".rstrip()]
    for entry in record["models"]:
        change = f"{entry['requested']} -> {entry['model']}" if entry.get("matched") else f"{entry['model']}"
        note = "" if _at_target(record, entry) else " (no width knob: not matched)"
        lines.append(f"  {change}: {entry['cost']:.4g} ({100 * entry['deviation']:+.1f}%){note}")
    return lines


def qualify_sentence(sentence: str, record: dict[str, Any] | None, first: str, second: str) -> str:
    """Add the matching to a comparison sentence about models ``first`` and ``second``.

    ``"a beats b by 0.05 Dice (…)."`` becomes ``"a beats b by 0.05 Dice (…) at matched FLOPs (±4.2%)."`` when both
    were matched (x = the larger of their deviations from the target), and says which is not matched otherwise.
    Without a record the sentence is returned unchanged.
    """
    if record is None:
        return sentence
    label = MEASURES[record["measure"]][0]
    entries = _entries(record)
    pair = [(name, entries.get(name)) for name in (first, second)]
    unmatched = [name for name, entry in pair if not _at_target(record, entry)]
    if unmatched:
        details = ", ".join(f"{name} {_deviation(entries.get(name))}" for name in unmatched)
        qualifier = f"; not at matched {label}: {details}"
    else:
        spread = max(abs(float(entry["deviation"])) for _, entry in pair)
        qualifier = f" at matched {label} (±{100 * spread:.1f}%)"
    body = sentence[:-1] if sentence.endswith(".") else sentence
    return f"{body}{qualifier}."


def _deviation(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "(not in the matching record)"
    return f"({100 * float(entry['deviation']):+.1f}% from the target)"


def cost_frame(record: dict[str, Any], jobs: pd.DataFrame, board: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """One row per trained model: requested names, matched flag, mean costs over done jobs, deviation, mean Dice.

    Columns: ``model, requested, matched, params, mflop_per_voxel_train, tensor_peak_mb, train_seconds, cost,
    deviation, dice_mean``. A cost no done job reports comes from the matching record (computed when matching).
    """
    entries = _entries(record)
    requested: dict[str, list[str]] = {}
    for entry in record["models"]:
        requested.setdefault(str(entry.get("model")), []).append(str(entry.get("requested")))
    column = MEASURES[record["measure"]][1]
    dice = dict(zip(board["model"], board["dice_mean"], strict=True)) if not board.empty else {}
    rows = []
    for model in [m for m in models if m in entries] + [m for m in entries if m not in models]:
        entry = entries[model]
        done = _done(jobs, model)
        row = {"model": model, "requested": ", ".join(requested.get(model, [])), "matched": _at_target(record, entry)}
        recorded = entry.get("costs") if isinstance(entry.get("costs"), dict) else {}
        for measure, (_, jobs_column, _) in MEASURES.items():
            row[jobs_column] = _mean(done, jobs_column)
            if math.isnan(row[jobs_column]) and isinstance(recorded.get(measure), int | float):
                row[jobs_column] = float(recorded[measure])  # no done job reports it: the figure from matching time
        row["train_seconds"] = _mean(done, "train_seconds")
        if math.isnan(row[column]):
            row[column] = float(entry["cost"])
        row |= {"cost": float(entry["cost"]), "deviation": float(entry["deviation"]), "dice_mean": dice.get(model)}
        rows.append(row)
    return pd.DataFrame(rows)


def _done(jobs: pd.DataFrame, model: str) -> pd.DataFrame:
    if jobs.empty or "model" not in jobs:
        return jobs
    chosen = jobs[jobs["model"].astype(str) == model]
    return chosen[chosen["status"] == "done"] if "status" in chosen else chosen


def _mean(done: pd.DataFrame, column: str) -> float:
    if done.empty or column not in done:
        return math.nan
    values = pd.to_numeric(done[column], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def _cost_table(frame: pd.DataFrame, record: dict[str, Any]) -> tables.Table:
    label = MEASURES[record["measure"]][0]
    columns = ("model", "requested as", "matched", "params", "training MFLOP/voxel", "peak tensor MiB",
               "train s/fold", f"{label} vs target")  # fmt: skip
    rows = tuple(
        (
            r["model"],
            r["requested"],
            "yes" if r["matched"] else "no (fixed model)",
            tables.fmt_count(r["params"]),
            tables.fmt(r["mflop_per_voxel_train"], 3),
            tables.fmt(r["tensor_peak_mb"], 1),
            tables.fmt(r["train_seconds"], 0),
            f"{100 * r['deviation']:+.1f}%",
        )
        for _, r in frame.iterrows()
    )
    return tables.Table(columns, rows)


def _pareto_blocks(frame: pd.DataFrame, models: list[str]) -> list[FigureBlock]:
    blocks = []
    for measure, (_, column, axis) in MEASURES.items():
        x = pd.to_numeric(frame[column], errors="coerce").to_numpy(float)
        y = pd.to_numeric(frame["dice_mean"], errors="coerce").to_numpy(float)
        if frame.empty or np.isnan(x).all():
            continue  # e.g. tensor memory of a run made before jobs.csv recorded it, matched on FLOPs
        front = stats.pareto_front(x, y)
        png = figures.pareto(frame, cost_column=column, cost_label=axis, front=front, models=models)
        on_front = ", ".join(frame["model"][front]) if front.any() else "none"
        blocks.append(
            FigureBlock(f"pareto_matched_{measure}.png", png, f"Mean Dice vs {axis}; Pareto front: {on_front}")
        )
    return blocks


def matching_section(
    manifest: dict[str, Any], jobs: pd.DataFrame, board: pd.DataFrame, models: list[str]
) -> tuple[Section, list[FigureBlock]] | None:
    """The "Compute matching" section and its figures (also returned alone, to be written to ``figures/``).

    Returns:
        None for a run without a matching record.
    """
    record = matching_record(manifest)
    if record is None:
        return None
    frame = cost_frame(record, jobs, board, models)
    label, unit = MEASURES[record["measure"]][0], record.get("unit", "")
    matched = frame[frame["matched"]] if not frame.empty else frame
    spread = float(matched["deviation"].abs().max()) if len(matched) else math.nan
    limit = float(record.get("max_deviation", 0.25))
    reference, whose = record["reference"], _WHOSE[record["measure"]]
    intro = (
        f"`--match {record['measure']} --match-to {reference}`: every width/depth family member was scaled "
        f"to the width whose {whose} closest to {reference}'s {record['target']:.4g} {unit} "
        f"(a member farther than ±{100 * limit:.0f}% would have been refused). "
        + (f"Matched models lie within ±{100 * spread:.1f}% of the target." if len(matched) else "")
    )
    blocks: list[Any] = [Paragraph(intro)]
    unmatched = frame[~frame["matched"]] if not frame.empty else frame
    if len(unmatched):
        blocks.append(Paragraph("Not matched (fixed models without a width knob, run as they are):"))
        blocks.append(Bullets(tuple(f"{r['model']}: {100 * r['deviation']:+.1f}% {label} vs the target"
                                    for _, r in unmatched.iterrows())))  # fmt: skip
    caption = "Costs per model (means over done jobs); the last column is the recorded deviation from the target"
    blocks.append(TableBlock(_cost_table(frame, record), caption))
    figure_blocks = _pareto_blocks(frame, models)
    return Section("Compute matching", (*blocks, *figure_blocks)), figure_blocks
