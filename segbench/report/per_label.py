"""The report's per-label tables: multi-label runs (e.g. organ and lesion) show each label apart.

The leaderboard averages a case's labels (:mod:`segbench.report.tables`); a small structure such as a lesion can
hide there behind a large one. Here every (model, label) gets its own penalised mean / median (misses count as the
metric's stated penalty, as everywhere in the report) and, for labels that some cases lack, how those cases fared:
the metric policy scores "both empty" as perfect (Dice 1) and any predicted voxel as a miss.
"""

from __future__ import annotations

import pandas as pd

from segbench.evaluation import summarize
from segbench.report.render import Paragraph, Section, TableBlock
from segbench.report.tables import Table, fmt

__all__ = ["SHOWN_METRICS", "label_cells", "label_name", "per_label_section", "shown"]

SHOWN_METRICS = ("dice", "hd95", "nsd")
_NOT_METRICS = ["model", "folds", "postprocessed", "label_name"]


def shown(names) -> list[str]:
    """The metrics of :data:`SHOWN_METRICS` among ``names``, in that order."""
    return [metric for metric in SHOWN_METRICS if metric in set(names)]


def label_name(group: pd.DataFrame, label: int) -> str:
    """``"2 lesion"``: the label value and its name from ``dataset.json`` (when the table has one)."""
    return f"{label} {group.iloc[0].get('label_name', '') or ''}".strip()


def label_cells(group: pd.DataFrame) -> list[str]:
    """``"mean / median"`` of each shown metric over the rows of one (model, label), then the number of misses."""
    summary = summarize(group.drop(columns=[c for c in _NOT_METRICS if c in group])).set_index("metric")
    cells = [f"{fmt(summary.loc[m, 'mean'])} / {fmt(summary.loc[m, 'median'])}" for m in shown(summary.index)]
    return [*cells, str(int(summary["misses"].iloc[0]))]


def per_label_section(metrics: pd.DataFrame) -> Section | None:
    """The "Per label" section from ``metrics.csv``'s rows, or ``None`` for a run with one label (or none)."""
    if metrics.empty or metrics["label"].nunique() < 2:
        return None
    rows = []
    for (model, label), group in metrics.groupby(["model", "label"], sort=True):
        empty = group[group["ref_empty"].astype(bool)]
        false_positive = int((~empty["pred_empty"].astype(bool)).sum())
        rows.append((str(model), label_name(group, int(label)), str(group["case_id"].nunique()), *label_cells(group),
                     f"{len(empty)} ({false_positive} with a prediction)" if len(empty) else "0"))  # fmt: skip
    columns = ("model", "label", "cases", *(f"{m} mean / median" for m in shown(metrics.columns)), "misses",
               "empty references")  # fmt: skip
    text = (
        "Each label apart, over every out-of-fold case (the leaderboard averages a case's labels). Misses (exactly "
        "one of prediction and reference empty) count as the stated penalty. Empty references: cases without the "
        "label; a model that predicts nothing there scores Dice 1 and distance 0, any predicted voxel is a miss."
    )
    return Section("Per label", (Paragraph(text), TableBlock(Table(columns, tuple(rows)))))
