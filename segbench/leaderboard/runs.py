"""The runs of a leaderboard: one run directory per dataset, read through the report's own tables.

Each run is read with :func:`segbench.report.read_run`, so its per-case values (misses counted as the report's
penalty), its leaderboard, its costs and its verdicts (:func:`segbench.report.compare_models`) are exactly what its
report states.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from segbench.errors import ConfigError
from segbench.report import RunContext, compare_models, read_run
from segbench.report.stats import Comparison

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetRun:
    """One dataset's run: its name, folder, the report's tables and the report's verdicts.

    ``models`` are the run's models with evaluated cases, best mean Dice first (the report's order); ``comparisons``
    every one of them against the best on each headline metric, Holm-corrected per metric, as the report has them.
    """

    dataset: str
    run_dir: Path
    context: RunContext
    models: tuple[str, ...]
    comparisons: tuple[Comparison, ...]

    @property
    def manifest(self) -> dict[str, Any]:
        return self.context.inputs.manifest

    @property
    def jobs(self) -> pd.DataFrame:
        return self.context.inputs.jobs

    @property
    def per_case(self) -> pd.DataFrame:
        """One row per (model, fold, case), values averaged over repeats (penalised columns ``<metric>_pen``)."""
        return self.context.per_case

    @property
    def board(self) -> pd.DataFrame:
        return self.context.board


def dataset_name(manifest: dict[str, Any], run_dir: Path) -> str:
    """The dataset's name: dataset.json's ``name`` as the manifest records it, else its folder's, else the run's."""
    dataset = manifest.get("dataset") or {}
    name = str(dataset.get("name") or "").strip()
    if name:
        return name
    path = str(dataset.get("path") or "").rstrip("/")
    return Path(path).name if path else Path(run_dir).resolve().name


def read_dataset_run(run_dir: str | Path, *, seed: int = 0) -> DatasetRun:
    """Read one run directory (finished or partial) as a leaderboard's dataset.

    Raises:
        RunDirectoryError: no readable manifest.json in ``run_dir``.
    """
    run_dir = Path(run_dir)
    context = read_run(run_dir, seed=seed)
    models = tuple(context.ranked)
    # As the report's Statistics section: every model against the best, in the report's model order.
    comparisons = compare_models(context.per_repeat, context.best, context.models, seed) if len(models) > 1 else []
    name = dataset_name(context.inputs.manifest, run_dir)
    log.info("read %s: dataset %s, %d models with evaluated cases", run_dir, name, len(models))
    return DatasetRun(name, run_dir, context, models, tuple(comparisons))


def read_dataset_runs(run_dirs: list[str | Path], *, seed: int = 0) -> list[DatasetRun]:
    """Read every run; sorted by dataset name so the output does not depend on the order of the arguments.

    Raises:
        ConfigError: no run, a folder given twice, or two runs of one dataset (the message names both).
        RunDirectoryError: a folder without a readable manifest.json.
    """
    if not run_dirs:
        raise ConfigError("no RUN_DIR given; pass one run directory per dataset (`segbench leaderboard RUN_A RUN_B …`)")
    seen: dict[Path, Path] = {}
    for run_dir in map(Path, run_dirs):
        if run_dir.resolve() in seen:
            raise ConfigError(f"{run_dir} is given twice (also as {seen[run_dir.resolve()]}); pass each run once")
        seen[run_dir.resolve()] = run_dir
    runs = [read_dataset_run(run_dir, seed=seed) for run_dir in map(Path, run_dirs)]
    by_name: dict[str, DatasetRun] = {}
    for run in runs:
        other = by_name.setdefault(run.dataset, run)
        if other is not run:
            raise ConfigError(
                f"{other.run_dir} and {run.run_dir} are both runs of dataset {run.dataset!r}; a leaderboard ranks one "
                "run per dataset: pass only one of them"
            )
    return sorted(runs, key=lambda r: r.dataset)
