"""The report's statement of how every model was trained: the recipe, the budget, deviations, deep supervision.

It heads every section that shows results, because a result means little without it: nnU-Net's recipe at 5 epochs
is not nnU-Net's result, and a run that changed the learning rate did not train with the recipe it names.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from segbench.recipes.catalog import get_recipe


def recipe_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest["recipe"]``, or for a run made before recipes existed, the tutorial recipe with its budget."""
    record = manifest.get("recipe")
    if isinstance(record, dict):
        return record
    train = (manifest.get("config") or {}).get("train") or {}
    iterations = train.get("iterations")
    budget = f"{train['time_budget_s']:g} s of training" if train.get("time_budget_s") else f"{iterations} iterations"
    return {"name": "tutorial", "title": get_recipe("tutorial").title, "budget": budget, "deviations": []}


def deep_supervision_by_model(jobs: pd.DataFrame) -> dict[str, bool]:
    """Whether each model trained with deep supervision (``jobs.csv`` ``deep_supervision``; absent: no)."""
    if jobs.empty or "deep_supervision" not in jobs.columns:
        return {}
    flags = jobs.dropna(subset=["deep_supervision"]).groupby("model")["deep_supervision"].first()
    return {str(model): str(value).lower() in ("true", "1", "1.0") for model, value in flags.items()}


def recipe_sentence(manifest: dict[str, Any], jobs: pd.DataFrame) -> str:
    """One paragraph: ``Recipe: nnunet (…); budget 5 epochs × 250 iterations; deviations: none; deep supervision:
    nnunet_plain yes, unet no (no deep-supervision outputs).``"""
    record = recipe_of(manifest)
    deviations = record.get("deviations") or []
    parts = [f"Recipe: {record.get('title') or record.get('name')}", f"budget {record.get('budget')} per job",
             "deviations from the recipe: " + ("; ".join(deviations) if deviations else "none")]  # fmt: skip
    train = (manifest.get("config") or {}).get("train") or {}
    if train.get("deep_supervision"):
        flags = deep_supervision_by_model(jobs)
        described = [f"{model} {'yes' if on else 'no (no deep-supervision outputs)'}" for model, on in flags.items()]
        parts.append("deep supervision: " + (", ".join(described) if described else "–"))
    return "; ".join(parts) + "."
