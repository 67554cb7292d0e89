"""Hand-built run directories for the leaderboard tests: known per-case values, one dataset per run.

:func:`write_run` writes what ``segbench run`` leaves for the report to read (manifest.json, splits.json, metrics.csv,
jobs.csv) with the values a test chooses, so every ranking can be computed by hand.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from report_fixtures import job_row

DIAGONAL = 40.0


def write_run(
    root: Path,
    dataset: str,
    values: Mapping[str, float | Sequence[float]],
    *,
    cases: int = 12,
    folds: int = 2,
    iterations: int = 100,
    precision: str = "fp32",
    hardware: str = "cpu: test cpu",
    recipe: str = "tutorial",
) -> Path:
    """A run of ``dataset`` under ``root/<dataset>``: ``values`` maps model → its mean Dice (one number, spread over
    the cases by :func:`_spread`) or its Dice per case (a list); HD95 = 10 · (1 − Dice) mm. Returns the run folder."""
    run = root / dataset
    run.mkdir(parents=True)
    ids = [f"case_{i:03d}" for i in range(cases)]
    split = [ids[k::folds] for k in range(folds)]
    (run / "splits.json").write_text(json.dumps([{"train": sorted(set(ids) - set(v)), "val": v} for v in split]))
    manifest = {
        "command": "segbench run (test)",
        "config": {"models": list(values), "folds": folds, "recipe": recipe, "repeats": 1,
                   "train": {"iterations": iterations, "precision": "auto"}},
        "recipe": {"name": recipe, "budget": f"{iterations} iterations", "deviations": []},
        "dataset": {"name": dataset, "path": str(root / "data" / dataset), "format": "msd", "fingerprint": dataset,
                    "num_training": cases, "labels": {"1": "organ"}},
        "models": list(values),
        "environment": {"cpu": "test cpu", "gpus": []},
        "device_type": "cpu",
    }  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2))
    rows, jobs = [], []
    for model, value in values.items():
        per_case = _spread(float(value), cases) if isinstance(value, int | float) else [float(v) for v in value]
        for fold, val in enumerate(split):
            jobs.append({**job_row(model, fold), "precision": precision, "hardware": hardware})
            for case in val:
                dice = per_case[ids.index(case)]
                rows.append({"model": model, "fold": fold, "repeat": 0, "case_id": case, "label": 1,
                             "label_name": "organ", "dice": dice, "hd95": round(10 * (1 - dice), 6),
                             "nsd": dice, "miss": False, "diagonal_mm": DIAGONAL})  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    pd.DataFrame(jobs).to_csv(run / "jobs.csv", index=False)
    return run


def _spread(mean: float, cases: int) -> list[float]:
    """``cases`` values with exactly this mean in exact arithmetic, spread by a slope that grows with the mean.

    Two models with different means then differ on every case by a different amount (no tied differences: scipy's
    Wilcoxon test would fall back to a slow permutation test) and always in the same direction (two spreads differ by
    at most 1 % of the difference of their means); two models with equal means get identical cases.
    """
    slope = 0.001 * (1 + 10 * mean)
    return [mean + slope * (i - (cases - 1) / 2) / (cases - 1) * 2 for i in range(cases)]
