"""Comparability of the runs of a leaderboard: recipe, budget, precision and hardware, read from each run.

Runs that differ in any of these answer different questions (a longer budget or another GPU changes what a model
reaches and costs); the leaderboard still ranks them but lists the differing fields per run.

* recipe: the recipe's name (``manifest.recipe.name``, else ``config.recipe``) plus its recorded deviations.
* budget: ``manifest.recipe.budget`` (e.g. ``"120 iterations"``), else the config's iterations / epochs / seconds.
* precision: the precisions the done jobs ran at (jobs.csv ``precision``), else the requested ``train.precision``.
* hardware: where the done jobs ran (jobs.csv ``hardware``), else the manifest's GPUs or CPU model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from segbench.leaderboard.runs import DatasetRun

FIELDS = ("recipe", "budget", "precision", "hardware")


def _done_values(jobs: pd.DataFrame, column: str) -> str:
    if jobs.empty or column not in jobs or "status" not in jobs:
        return ""
    done = jobs[jobs["status"] == "done"][column].dropna().astype(str)
    return ", ".join(sorted({v for v in done if v and v != "nan"}))


def _recipe(manifest: dict[str, Any]) -> str:
    recipe = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else {}
    name = recipe.get("name") or (manifest.get("config") or {}).get("recipe") or "tutorial"
    deviations = [str(d) for d in recipe.get("deviations") or []]
    return str(name) + (f" (deviations: {'; '.join(deviations)})" if deviations else "")


def _budget(manifest: dict[str, Any]) -> str:
    recipe = manifest.get("recipe") if isinstance(manifest.get("recipe"), dict) else {}
    if recipe.get("budget"):
        return str(recipe["budget"])
    config = manifest.get("config") or {}
    train = config.get("train") if isinstance(config.get("train"), dict) else config
    for key, unit in (("time_budget_s", "s"), ("epochs", "epochs"), ("iterations", "iterations")):
        if train.get(key):
            return f"{train[key]} {unit}"
    return "–"


def _precision(run: DatasetRun) -> str:
    config = run.manifest.get("config") or {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    return _done_values(run.jobs, "precision") or str(train.get("precision") or "–")


def _hardware(run: DatasetRun) -> str:
    measured = _done_values(run.jobs, "hardware")
    if measured:
        return measured
    environment = run.manifest.get("environment") or {}
    gpus = [str(g) for g in environment.get("gpus") or []]
    if run.manifest.get("device_type") == "cuda" and gpus:
        return ", ".join(sorted(set(gpus)))
    return str(environment.get("cpu") or environment.get("device") or "–")


def run_conditions(run: DatasetRun) -> dict[str, str]:
    """The run's value of each field of :data:`FIELDS`."""
    return {"recipe": _recipe(run.manifest), "budget": _budget(run.manifest), "precision": _precision(run),
            "hardware": _hardware(run)}  # fmt: skip


@dataclass(frozen=True)
class Comparability:
    """Each run's conditions (dataset → field → value) and the fields whose values differ between runs."""

    conditions: dict[str, dict[str, str]]
    differing: tuple[str, ...]

    @property
    def comparable(self) -> bool:
        return not self.differing

    def sentences(self) -> tuple[str, ...]:
        """One line per differing field: ``"budget differs: A 120 iterations; B 40 iterations"``."""
        return tuple(
            f"{field} differs: " + "; ".join(f"{name} {values[field]}" for name, values in self.conditions.items())
            for field in self.differing
        )


def comparability(runs: list[DatasetRun]) -> Comparability:
    """The conditions of every run and which of them differ (a field differs when two runs record other values)."""
    conditions = {run.dataset: run_conditions(run) for run in runs}
    differing = tuple(field for field in FIELDS if len({values[field] for values in conditions.values()}) > 1)
    return Comparability(conditions, differing)
