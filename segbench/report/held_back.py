"""The report's "Held-back test set" section: ``test_metrics.csv`` (:mod:`segbench.held_out`), apart from the folds.

Means are penalised as everywhere in the report (a missed label's distances count as the image diagonal), per model
and label; the cross-validation's leaderboard and statistics never include these cases.
"""

from __future__ import annotations

import pandas as pd

from segbench.report.per_label import label_cells, label_name, shown
from segbench.report.render import Paragraph, Section, TableBlock
from segbench.report.tables import Table
from segbench.rundir import TEST_METRICS_FILE

__all__ = ["held_back_section"]


def held_back_section(test_metrics: pd.DataFrame) -> Section | None:
    """The section, or ``None`` when the run has no scored test set."""
    if test_metrics.empty:
        return None
    rows = []
    for (model, label), group in test_metrics.groupby(["model", "label"], sort=True):
        first = group.iloc[0]
        cells = [model, label_name(group, int(label)), str(group["case_id"].nunique()), str(first["folds"]),
                 "yes" if bool(first["postprocessed"]) else "no", *label_cells(group)]  # fmt: skip
        rows.append(tuple(cells))
    columns = ("model", "label", "cases", "ensemble of folds", "postprocessed",
               *(f"{m} mean / median" for m in shown(test_metrics.columns)), "misses")  # fmt: skip
    text = (
        "Test cases held back from the cross-validation (the dataset's labelsTs/), segmented by each model's fold "
        "ensemble with `segbench predict --test --evaluate`. They take no part in the leaderboard, the statistics or "
        f"the postprocessing decisions above. Per-case scores: {TEST_METRICS_FILE}."
    )
    return Section("Held-back test set", (Paragraph(text), TableBlock(Table(columns, tuple(rows)))))
