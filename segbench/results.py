"""Run-directory I/O: job result files and the analysis-ready tables (see docs/run-directory.md).

``metrics.csv`` and ``jobs.csv`` are always rebuilt from the per-job ``result.json`` files, so a crash
while writing them never loses anything: the job files are the source of truth.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from segbench import rundir
from segbench.atomic import atomic_write_json, atomic_write_text
from segbench.metrics import metric_keys

log = logging.getLogger(__name__)

JOB_STATUSES = ("done", "failed", "diverged", "oom", "killed", "timeout")
# jobs.csv only: an expected job of the manifest's grid without a result.json (never written to a result.json).
MISSING_STATUS = "missing"


def metrics_columns() -> tuple[str, ...]:
    """Columns of ``metrics.csv``: the job and case, ``label_name``, then the row of the metric catalogue."""
    keys = metric_keys()
    return ("model", "fold", "repeat", "case_id", keys[0], "label_name", *keys[1:])


JOBS_COLUMNS = (
    "model", "fold", "repeat", "status", "reason", "family", "params", "mflop_per_voxel_forward",
    "mflop_per_voxel_train", "device", "hardware", "precision", "memory_format", "recipe", "epochs", "deep_supervision",
    "optimizer", "lr", "batch_size", "patch_size", "iterations", "train_seconds", "train_iters_per_s",
    "train_voxels_per_s", "data_wait_share", "achieved_gflop_per_s", "tensor_peak_mb", "tensor_parameters_mb",
    "tensor_buffers_mb", "tensor_gradients_mb", "tensor_optimizer_mb", "tensor_activations_mb", "tensor_temporaries_mb",
    "tensor_other_mb", "peak_gpu_mem_allocated_mb", "peak_gpu_mem_reserved_mb", "predict_gpu_mem_allocated_mb",
    "predict_gpu_mem_reserved_mb", "tf32_matmul", "tf32_cudnn", "peak_rss_mb", "inference_seconds_per_case",
    "final_loss", "num_val_cases",
)  # fmt: skip

# Columns that are identifiers or free text, never numbers (a case id "001" must not become 1).
TEXT_COLUMNS = ("model", "case_id", "label_name", "status", "reason", "family", "device", "patch_size", "host",
                "gpu", "phase", "hardware", "precision", "memory_format", "recipe", "optimizer")  # fmt: skip
TEXT_DTYPES = {column: str for column in TEXT_COLUMNS}


@dataclass(frozen=True)
class JobResult:
    """The content of one ``result.json``: outcome, the jobs.csv row and the metrics.csv rows of a job.

    ``repeat`` is the job's repeat (0-based) and ``repeats`` the run's repeat count R (it decides the folder layout,
    see :mod:`segbench.rundir`); a ``result.json`` written before repeats existed reads as repeat 0 of 1.
    """

    model: str
    fold: int
    status: str
    reason: str
    job: dict[str, Any]
    metrics: list[dict[str, Any]]
    repeat: int = 0
    repeats: int = 1

    @classmethod
    def for_job(cls, key: rundir.JobRef, status: str, reason: str, job: dict, metrics: list) -> JobResult:
        """The result of the job ``key`` names (a JobSpec or JobKey: model, fold, repeat, repeats)."""
        repeat, repeats = int(getattr(key, "repeat", 0)), int(getattr(key, "repeats", 1))
        return cls(key.model, key.fold, status, reason, job, metrics, repeat, repeats)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "fold": self.fold,
            "repeat": self.repeat,
            "repeats": self.repeats,
            "status": self.status,
            "reason": self.reason,
            "job": self.job,
            "metrics": self.metrics,
        }


def write_job_result(run_dir: str | Path, result: JobResult) -> Path:
    """Atomically write ``result.json`` of a job: the last file a job writes (its completion marker).

    Raises:
        ValueError: unknown status.
        OSError: the write failed (e.g. disk full); nothing half-written is left behind.
    """
    if result.status not in JOB_STATUSES:
        raise ValueError(f"unknown job status {result.status!r}; expected one of {', '.join(JOB_STATUSES)}")
    path = rundir.result_path(run_dir, result)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, _finite_or_str(result.to_json()))


def _finite_or_str(obj: Any) -> Any:
    # JSON has no inf/NaN; keep them readable and round-trippable as strings ("inf", "nan").
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {key: _finite_or_str(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_str(value) for value in obj]
    return obj


def read_job_result(path: str | Path) -> JobResult:
    """Read one ``result.json``.

    Raises:
        ValueError: the file is truncated, not JSON, or lacks required keys (message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return JobResult(
            model=str(data["model"]),
            fold=int(data["fold"]),
            status=str(data["status"]),
            reason=str(data.get("reason", "")),
            job=dict(data.get("job", {})),
            metrics=list(data.get("metrics", [])),
            repeat=int(data.get("repeat", 0)),
            repeats=int(data.get("repeats", 1)),
        )
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is truncated or malformed ({exc.__class__.__name__}: {exc})") from None


@dataclass(frozen=True)
class ScanResult:
    """All readable job results of a run directory plus the problems met while reading it."""

    results: list[JobResult]
    problems: list[str]


def scan_results(run_dir: str | Path) -> ScanResult:
    """Read every job folder's ``result.json``; unreadable ones become ``problems`` (never fatal)."""
    results: list[JobResult] = []
    problems: list[str] = []
    for key, folder in rundir.iter_job_dirs(run_dir):
        path = rundir.result_path(run_dir, key)
        if not path.is_file():
            continue
        try:
            result = read_job_result(path)
        except ValueError as exc:
            where = folder.relative_to(rundir.jobs_root(run_dir) / key.model).as_posix()  # fold_1 or fold_1/repeat_0
            problems.append(f"{key.model} {where}: {exc}; this job will be redone on --resume")
            continue
        results.append(result)
    return ScanResult(results, problems)


def _frame(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = pd.NA
    extra = [c for c in frame.columns if c not in columns]
    frame = frame[list(columns) + extra]
    # "inf"/"nan" strings from result.json back to floats — only in numeric columns: ids such as "001" stay text.
    for column in frame.columns:
        if column not in TEXT_COLUMNS and frame[column].dtype == object:
            converted = pd.to_numeric(frame[column], errors="coerce")
            if converted.notna().sum() == frame[column].notna().sum() and frame[column].notna().any():
                frame[column] = converted
    return frame


def metrics_table(results: list[JobResult]) -> pd.DataFrame:
    """Tidy per-case table (one row per model, fold, case_id, label), sorted."""
    return metrics_rows_table([{**row, "repeat": result.repeat} for result in results for row in result.metrics])


def metrics_rows_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """metrics.csv rows (dicts with its columns) as the sorted table, columns in metrics.csv's order."""
    frame = _frame(rows, metrics_columns())
    return frame.sort_values(["model", "fold", "repeat", "case_id", "label"], kind="stable").reset_index(drop=True)


def jobs_table(results: list[JobResult], *, missing: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per (model, fold, repeat) with its status and costs, plus the ``missing`` rows (:func:`missing_rows`),
    sorted."""
    rows = [{**result.job, "model": result.model, "fold": result.fold, "repeat": result.repeat,
             "status": result.status, "reason": result.reason} for result in results]  # fmt: skip
    rows += list(missing)
    frame = _frame(rows, JOBS_COLUMNS)
    return frame.sort_values(["model", "fold", "repeat"], kind="stable").reset_index(drop=True)


def rebuild_tables(run_dir: str | Path) -> ScanResult:
    """Rewrite ``metrics.csv`` and ``jobs.csv`` from the job folders (atomically); returns what was read.

    Every expected job of the manifest's grid (models × folds × repeats) without a readable ``result.json`` gets a
    jobs.csv row with status ``missing`` and a reason (:func:`missing_rows`), so the table always lists the whole grid.
    """
    scan = scan_results(run_dir)
    jobs = jobs_table(scan.results, missing=missing_rows(run_dir, scan.results))
    atomic_write_text(rundir.metrics_path(run_dir), metrics_table(scan.results).to_csv(index=False))
    atomic_write_text(rundir.jobs_table_path(run_dir), jobs.to_csv(index=False))
    for problem in scan.problems:
        log.warning(problem)
    link_oof_predictions(run_dir, scan.results)
    return scan


def link_oof_predictions(run_dir: str | Path, found: list[JobResult]) -> dict[str, int]:
    """(Re)build ``RUN_DIR/predictions/<model>/``: every prediction of the model's done jobs, one file per case.

    Files are hard links to the job folders' predictions (copies where the file system has no hard links), so the
    merged folders cost no space. Only ``done`` jobs count (with repeats, repeat 0); files of other jobs are removed.
    Returns model → number of files.
    """
    wanted: dict[Path, Path] = {}
    for result in found:
        if result.status != "done" or getattr(result, "repeat", 0) != 0:  # with repeats: the first one's
            continue
        folder = rundir.predictions_dir(run_dir, result)
        for source in sorted(folder.glob(f"*{rundir.PREDICTION_SUFFIX}")) if folder.is_dir() else ():
            wanted[rundir.oof_predictions_dir(run_dir, result.model) / source.name] = source
    root = rundir.oof_predictions_root(run_dir)
    for stale in sorted(root.glob(f"*/*{rundir.PREDICTION_SUFFIX}")) if root.is_dir() else ():
        if stale not in wanted:
            stale.unlink()
    counts: dict[str, int] = {}
    for target, source in wanted.items():
        counts[target.parent.name] = counts.get(target.parent.name, 0) + 1
        if target.exists() and os.path.samefile(target, source):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        try:
            os.link(source, temporary)
        except OSError:  # no hard links here (another file system, some network mounts)
            shutil.copy2(source, temporary)
        os.replace(temporary, target)
    return counts


def expected_grid(run_dir: str | Path) -> list[tuple[str, int, int]]:
    """(model, fold, repeat) of every job the run's manifest asks for; empty without a readable manifest.

    Folds come from ``splits.json`` (or ``config.folds`` when it is unreadable), repeats from ``config.repeats``
    (1 when absent).
    """
    try:
        manifest = load_manifest(run_dir)
    except (OSError, ValueError):
        return []
    config = manifest.get("config") or {}
    try:
        folds = len(json.loads(rundir.splits_path(run_dir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        folds = int(config.get("folds") or 0)
    repeats = int(config.get("repeats") or 1)
    models = [str(m) for m in manifest.get("models") or config.get("models") or []]
    return [(model, fold, repeat) for model in models for fold in range(folds) for repeat in range(repeats)]


def missing_rows(run_dir: str | Path, found: list[JobResult]) -> list[dict[str, Any]]:
    """jobs.csv rows (status ``missing`` and why) for the expected jobs that have no readable result."""
    have = {(r.model, r.fold, int(getattr(r, "repeat", 0))) for r in found}
    grid = expected_grid(run_dir)
    repeats = 1 + max((repeat for _, _, repeat in grid), default=0)
    rows = []
    for model, fold, repeat in grid:
        if (model, fold, repeat) in have:
            continue
        key = rundir.JobKey(model, fold, repeat, repeats)
        rows.append({"model": model, "fold": fold, "repeat": repeat, "status": MISSING_STATUS,
                     "reason": _missing_reason(run_dir, key)})  # fmt: skip
    return rows


def _missing_reason(run_dir: str | Path, key: rundir.JobKey) -> str:
    folder = rundir.job_dir(run_dir, key)
    if not folder.is_dir():
        return "never started (the run stopped before this job, or it was never submitted)"
    if rundir.result_path(run_dir, key).exists():
        return f"its {rundir.RESULT_FILE} is unreadable; `segbench run --resume` redoes the job"
    if (folder / rundir.CHECKPOINT_LATEST).exists():
        return (
            "stopped before finishing (interrupted or still running); `segbench run --resume` continues it from its "
            "checkpoint"
        )
    return f"started but left no {rundir.RESULT_FILE} (interrupted or still running); `segbench run --resume` runs it"


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    # An empty file (a table written by hand, or by an old version, for a run without any row) is an empty table.
    try:
        return pd.read_csv(path, dtype=TEXT_DTYPES, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(columns))


def load_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``metrics.csv`` as a DataFrame (``inf`` distances preserved)."""
    return _read_table(rundir.metrics_path(run_dir), metrics_columns())


def load_postprocessed_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``metrics_postprocessed.csv`` as a DataFrame (metrics.csv's columns); an empty table when it is missing."""
    path = rundir.postprocessed_metrics_path(run_dir)
    if not path.is_file():
        return pd.DataFrame(columns=list(metrics_columns()))
    return _read_table(path, metrics_columns())


def load_jobs(run_dir: str | Path) -> pd.DataFrame:
    """``jobs.csv`` as a DataFrame (``reason`` empty string for done jobs)."""
    frame = _read_table(rundir.jobs_table_path(run_dir), JOBS_COLUMNS)
    if "reason" in frame:
        frame["reason"] = frame["reason"].astype(object).fillna("")
    return frame


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` as a dict."""
    return json.loads(rundir.manifest_path(run_dir).read_text(encoding="utf-8"))


def load_learning_curves(run_dir: str | Path) -> pd.DataFrame:
    """All ``training_log.csv`` files as one table: model, fold, repeat, iteration, loss, lr, wall_s."""
    frames = []
    for key, _ in rundir.iter_job_dirs(run_dir):
        path = rundir.learning_curve_path(run_dir, key)
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            log.warning("skipping unreadable learning curve %s (%s)", path, exc)
            continue
        frame.insert(0, "repeat", key.repeat)
        frame.insert(0, "fold", key.fold)
        frame.insert(0, "model", key.model)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["model", "fold", "repeat", "iteration", "loss", "lr", "wall_s"])
    return pd.concat(frames, ignore_index=True)


def write_learning_curve(run_dir: str | Path, job: rundir.JobRef, curve: list[dict[str, float]]) -> Path:
    """Atomically (re)write a job's ``training_log.csv`` from its rows (iteration, loss, lr, wall_s)."""
    return atomic_write_text(rundir.learning_curve_path(run_dir, job), pd.DataFrame(curve).to_csv(index=False))


def read_learning_curve(run_dir: str | Path, job: rundir.JobRef) -> list[dict[str, float]]:
    """A job's ``training_log.csv`` rows; empty when the file is missing, empty or unreadable."""
    path = rundir.learning_curve_path(run_dir, job)
    if not path.exists():
        return []
    try:
        return pd.read_csv(path).to_dict("records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return []
