"""The report's "Cost estimate and outcome" section: what the run said it would cost before its first job
(``manifest.json``'s ``estimate``, see :mod:`segbench.estimate`) next to what its jobs measured (``jobs.csv``).

A ratio is measured / estimated; :data:`TOLERANCE` is the factor within which an estimate counts as good.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from segbench.report import tables
from segbench.report.render import Paragraph, Section, TableBlock

__all__ = ["TOLERANCE", "comparison_frame", "estimate_section"]

TOLERANCE = 1.5
# (label, estimate key of a model's record or a callable on it, jobs.csv column or a callable on the done jobs)
_ROWS = (
    ("job time (s)", "job_s", "job_seconds"),
    ("training time (s)", "train_s", "train_seconds"),
    ("prediction per case (s)", lambda m, e: m["window_s"] * e["windows_per_case"], "inference_seconds_per_case"),
    ("peak tensor memory (MiB)", "tensor_peak_mb", "tensor_peak_mb"),
)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def comparison_frame(estimate: dict[str, Any], jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, measure): ``model, measure, estimated, measured, ratio, within`` (means over done jobs)."""
    done = jobs[jobs["status"] == "done"] if "status" in jobs else jobs.iloc[0:0]
    records = []
    for model in estimate.get("models") or []:
        if not isinstance(model, dict) or "model" not in model:
            continue
        mine = done[done["model"] == model["model"]]
        for label, key, column in _ROWS:
            estimated = _number(key(model, estimate) if callable(key) else model.get(key))
            measured = _number(mine[column].mean()) if column in mine and not mine.empty else math.nan
            ratio = measured / estimated if estimated and math.isfinite(estimated) else math.nan
            within = bool(math.isfinite(ratio) and 1 / TOLERANCE <= ratio <= TOLERANCE)
            records.append({"model": model["model"], "measure": label, "estimated": estimated, "measured": measured,
                            "ratio": ratio, "within": within})  # fmt: skip
    return pd.DataFrame(records, columns=["model", "measure", "estimated", "measured", "ratio", "within"])


def estimate_section(manifest: dict[str, Any], jobs: pd.DataFrame) -> Section | None:
    """The section, or ``None`` for a run that recorded no estimate (the Python API without ``on_estimate``)."""
    estimate = manifest.get("estimate")
    if not isinstance(estimate, dict):
        return None
    frame = comparison_frame(estimate, jobs)
    rows = tuple(
        (r.model, r.measure, tables.fmt(r.estimated, 3), tables.fmt(r.measured, 3), tables.fmt(r.ratio, 2),
         ("yes" if r.within else "no") if math.isfinite(r.ratio) else "–")
        for r in frame.itertuples(index=False)
    )  # fmt: skip
    jobs_rows = frame[frame["measure"] == "job time (s)"].dropna(subset=["ratio"])
    verdict = (
        f"Job times: {int(jobs_rows['within'].sum())} of {len(jobs_rows)} model(s) within {TOLERANCE}x of the estimate."
        if not jobs_rows.empty
        else "No done job to compare with yet."
    )
    cache = estimate.get("cache") or {}
    text = (
        f"Before its first job the run estimated {tables.fmt(_number(estimate.get('total_s')), 3)} s for "
        f"{estimate.get('jobs')} job(s) on {estimate.get('device')} ({estimate.get('precision')}), from training "
        f"steps and prediction windows timed on the machine that started it, and a cache of "
        f"{tables.fmt(_number(cache.get('bytes')) / 1e6, 3)} MB in {cache.get('path')}. Measured values are means over "
        f"done jobs; ratio = measured / estimated. {verdict}"
    )
    columns = ("model", "measure", "estimated", "measured", "ratio", f"within {TOLERANCE}x")
    blocks: list[Any] = [Paragraph(text), TableBlock(tables.Table(columns, rows))]
    advice = [line.strip() for line in estimate.get("advice") or []]
    if advice:
        blocks.append(Paragraph("The estimate said: " + " ".join(advice)))
    return Section("Cost estimate and outcome", tuple(blocks))
