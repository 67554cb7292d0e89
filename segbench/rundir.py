"""The layout of a run directory: every file and folder name, and every path builder (see docs/run-directory.md).

This is the only module that spells a run-directory name; everything else builds paths through it::

    RUN_DIR/
      manifest.json, splits.json, plans.json (with --plans), metrics.csv, jobs.csv, run.lock,
      postprocessing.json, metrics_postprocessed.csv, leaderboards.json
      jobs/<model>/fold_<k>/        job_dir(run_dir, job)  (runs with one repeat)
      jobs/<model>/fold_<k>/repeat_<r>/   job_dir(run_dir, job)  (runs with R > 1 repeats)
        result.json, result.json.previous, error.txt, error.txt.previous, training_log.csv,
        checkpoint_latest.pt, checkpoint_previous.pt, *.corrupt, job.lock, submitit.json, worker.log,
        predictions/<case_id>.nii.gz, predictions/<case_id>.npz (--save-probabilities)
      predictions/<model>/          oof_predictions_dir(run_dir, model): links to the done jobs' predictions
      extra_models/<name>/          extra_model_dir(run_dir, name): extra_model.json, metrics.csv,
                                    metrics_postprocessed.csv, predictions/<case_id>.nii.gz (an ensemble or external)
      slurm/                        submitit's pickles and logs
      report/                       the default report folder

A job is addressed by a *job key*: any object with ``model``, ``fold``, ``repeat`` (0-based) and ``repeats`` (the
run's repeat count R) attributes (:class:`JobKey`, :class:`segbench.job.JobSpec`,
:class:`segbench.results.JobResult`). A run with R = 1 has no repeat level (the layout of runs made before repeats
existed); with R > 1 every job folder is ``fold_<k>/repeat_<r>``. Keys without ``repeat``/``repeats`` count as
repeat 0 of a one-repeat run.

Pure path arithmetic: nothing here reads or writes files except :func:`iter_job_dirs`, which lists folders.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# --- RUN_DIR ------------------------------------------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"  # resolved config, dataset fingerprint, environment
SPLITS_FILE = "splits.json"  # nnU-Net splits_final.json format
PLANS_FILE = "plans.json"  # a copy of the --plans file the run used (nnU-Net plans format)
METRICS_FILE = "metrics.csv"  # per (model, fold, case_id, label); rebuilt from every result.json
POSTPROCESSING_FILE = "postprocessing.json"  # per model: the postprocessing decided on its folds
METRICS_POSTPROCESSED_FILE = "metrics_postprocessed.csv"  # metrics.csv's rows, of the postprocessed predictions
TEST_METRICS_FILE = "test_metrics.csv"  # the held-back test set scored by `segbench predict --test --evaluate`
JOBS_FILE = "jobs.csv"  # per (model, fold); rebuilt from every result.json
RUN_LOCK_FILE = "run.lock"  # locked (POSIX record lock) while a `segbench run` works on the directory
JOBS_DIR = "jobs"  # one folder per job below it
SUBMITIT_DIR = "slurm"  # submitit's pickles and the per-job Slurm logs
REPORT_DIR = "report"  # default output folder of `segbench report`
OOF_PREDICTIONS_DIR = "predictions"  # predictions/<model>/<case_id>.nii.gz: every out-of-fold prediction of a model
EVALUATION_FILE = "evaluation.csv"  # default output of `segbench evaluate RUN_DIR` (inside predictions/)
EVALUATION_POSTPROCESSED_FILE = "evaluation_postprocessed.csv"  # the same for the postprocessed predictions
LEADERBOARDS_FILE = "leaderboards.json"  # the leaderboards (`segbench leaderboard`) this run is part of

# --- one job folder -----------------------------------------------------------------------------------------------
FOLD_PREFIX = "fold_"  # jobs/<model>/fold_<k>
REPEAT_PREFIX = "repeat_"  # jobs/<model>/fold_<k>/repeat_<r> (only in runs with R > 1)
RESULT_FILE = "result.json"  # written last: the job's completion marker
ERROR_FILE = "error.txt"  # traceback of a failed job
PREVIOUS_SUFFIX = ".previous"  # result.json / error.txt of the attempt before the current one
LEARNING_CURVE_FILE = "training_log.csv"  # iteration, loss, lr, wall_s
CHECKPOINT_LATEST = "checkpoint_latest.pt"
CHECKPOINT_PREVIOUS = "checkpoint_previous.pt"
CORRUPT_SUFFIX = ".corrupt"  # an unloadable checkpoint, kept for inspection outside the rotation
JOB_LOCK_FILE = "job.lock"  # locked (POSIX record lock) while a process works on the job (one writer per job folder)
SUBMITIT_RECORD_FILE = "submitit.json"  # which scheduler job runs the job (written by the driver)
WORKER_LOG_FILE = "worker.log"  # stdout/stderr of a local GPU worker process
PREDICTIONS_DIR = "predictions"  # <case_id>.nii.gz, in the original geometry
PREDICTION_SUFFIX = ".nii.gz"
PROBABILITIES_SUFFIX = ".npz"  # predictions/<case_id>.npz: class probabilities (runs with --save-probabilities)

# --- one extra row (a model without jobs: an ensemble or external predictions) --------------------------------------
EXTRA_MODELS_DIR = "extra_models"  # RUN_DIR/extra_models/<name>/
EXTRA_MODEL_FILE = "extra_model.json"  # what the row is (kind, members or source, cases, decision), written last

# Markers of an attempt that must not outlive it: renamed to <name>.previous when a job (re)starts.
ATTEMPT_MARKERS = (RESULT_FILE, ERROR_FILE)

_FOLD_FOLDER = re.compile(re.escape(FOLD_PREFIX) + r"(?P<fold>[0-9]+)")
_REPEAT_FOLDER = re.compile(re.escape(REPEAT_PREFIX) + r"(?P<repeat>[0-9]+)")


class JobRef(Protocol):
    """Anything that names one job of a run: a :class:`JobKey`, a ``JobSpec`` or a ``JobResult``."""

    @property
    def model(self) -> str: ...

    @property
    def fold(self) -> int: ...


@dataclass(frozen=True, order=True)
class JobKey:
    """The identity of one job: which model on which fold in which repeat (training seed).

    ``repeats`` is the run's repeat count; it only decides the folder layout and is not part of the identity
    (equality and order use ``model, fold, repeat``).
    """

    model: str
    fold: int
    repeat: int = 0
    repeats: int = field(default=1, compare=False)


def job_label(job: JobRef) -> str:
    """``"unet fold 2"``, or ``"unet fold 2 repeat 1"`` in a run with repeats: names a job in logs and reasons."""
    label = f"{job.model} fold {job.fold}"
    return label + (f" repeat {_repeat(job)}" if _repeats(job) > 1 else "")


def _repeat(job: JobRef) -> int:
    return int(getattr(job, "repeat", 0) or 0)


def _repeats(job: JobRef) -> int:
    return int(getattr(job, "repeats", 1) or 1)


def manifest_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/manifest.json``."""
    return Path(run_dir) / MANIFEST_FILE


def splits_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/splits.json``."""
    return Path(run_dir) / SPLITS_FILE


def plans_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/plans.json``: the plans file the run used (only in runs with ``--plans``)."""
    return Path(run_dir) / PLANS_FILE


def metrics_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/metrics.csv``."""
    return Path(run_dir) / METRICS_FILE


def test_metrics_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/test_metrics.csv``: the held-back test set's scores, per model (``segbench predict --evaluate``)."""
    return Path(run_dir) / TEST_METRICS_FILE


def postprocessing_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/postprocessing.json``: each model's postprocessing decision."""
    return Path(run_dir) / POSTPROCESSING_FILE


def postprocessed_metrics_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/metrics_postprocessed.csv``: metrics.csv's rows for the postprocessed predictions."""
    return Path(run_dir) / METRICS_POSTPROCESSED_FILE


def leaderboards_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/leaderboards.json``: the leaderboard pages this run is part of (its report links them)."""
    return Path(run_dir) / LEADERBOARDS_FILE


def jobs_table_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/jobs.csv``."""
    return Path(run_dir) / JOBS_FILE


def jobs_root(run_dir: str | Path) -> Path:
    """``RUN_DIR/jobs``: the parent of every job folder."""
    return Path(run_dir) / JOBS_DIR


def submitit_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/slurm``: submitit's pickles and logs."""
    return Path(run_dir) / SUBMITIT_DIR


def report_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/report``: where ``segbench report`` writes by default."""
    return Path(run_dir) / REPORT_DIR


def oof_predictions_root(run_dir: str | Path) -> Path:
    """``RUN_DIR/predictions``: one folder per model of merged out-of-fold predictions."""
    return Path(run_dir) / OOF_PREDICTIONS_DIR


def oof_predictions_dir(run_dir: str | Path, model: str) -> Path:
    """``RUN_DIR/predictions/<model>``: every out-of-fold prediction of ``model`` (like nnU-Net's ``cv_niftis``)."""
    return oof_predictions_root(run_dir) / model


def evaluation_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/predictions/evaluation.csv``: where ``segbench evaluate RUN_DIR`` writes by default."""
    return oof_predictions_root(run_dir) / EVALUATION_FILE


def postprocessed_evaluation_path(run_dir: str | Path) -> Path:
    """``RUN_DIR/predictions/evaluation_postprocessed.csv``: ``segbench evaluate RUN_DIR``'s postprocessed scores."""
    return oof_predictions_root(run_dir) / EVALUATION_POSTPROCESSED_FILE


def job_dir(run_dir: str | Path, job: JobRef) -> Path:
    """Folder of one job: ``RUN_DIR/jobs/<model>/fold_<fold>``, plus ``/repeat_<r>`` when the run has R > 1."""
    folder = jobs_root(run_dir) / job.model / f"{FOLD_PREFIX}{job.fold}"
    return folder / f"{REPEAT_PREFIX}{_repeat(job)}" if _repeats(job) > 1 else folder


def result_path(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``result.json`` (its completion marker)."""
    return job_dir(run_dir, job) / RESULT_FILE


def error_path(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``error.txt`` (traceback of a failure)."""
    return job_dir(run_dir, job) / ERROR_FILE


def previous_path(path: Path) -> Path:
    """Where ``path`` (a :data:`ATTEMPT_MARKERS` file) goes when a new attempt starts: ``<name>.previous``."""
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def corrupt_path(path: Path) -> Path:
    """Where an unloadable checkpoint is moved: ``<name>.corrupt``."""
    return path.with_name(path.name + CORRUPT_SUFFIX)


def learning_curve_path(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``training_log.csv``."""
    return job_dir(run_dir, job) / LEARNING_CURVE_FILE


def submitit_record_path(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``submitit.json`` (which scheduler job runs it)."""
    return job_dir(run_dir, job) / SUBMITIT_RECORD_FILE


def worker_log_path(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``worker.log`` (output of its local GPU worker process)."""
    return job_dir(run_dir, job) / WORKER_LOG_FILE


def predictions_dir(run_dir: str | Path, job: JobRef) -> Path:
    """The job's ``predictions/`` folder."""
    return job_dir(run_dir, job) / PREDICTIONS_DIR


def prediction_path(run_dir: str | Path, job: JobRef, case_id: str) -> Path:
    """``predictions/<case_id>.nii.gz`` of a job."""
    return predictions_dir(run_dir, job) / f"{case_id}{PREDICTION_SUFFIX}"


def probabilities_path(run_dir: str | Path, job: JobRef, case_id: str) -> Path:
    """``predictions/<case_id>.npz`` of a job: the case's class probabilities (runs with ``--save-probabilities``)."""
    return predictions_dir(run_dir, job) / f"{case_id}{PROBABILITIES_SUFFIX}"


def extra_models_root(run_dir: str | Path) -> Path:
    """``RUN_DIR/extra_models``: one folder per extra row (``segbench ensemble``, ``segbench report --add``)."""
    return Path(run_dir) / EXTRA_MODELS_DIR


def extra_model_dir(run_dir: str | Path, name: str) -> Path:
    """``RUN_DIR/extra_models/<name>``: its ``extra_model.json``, metrics tables and ``predictions/``."""
    return extra_models_root(run_dir) / name


def extra_model_path(run_dir: str | Path, name: str) -> Path:
    """``RUN_DIR/extra_models/<name>/extra_model.json``."""
    return extra_model_dir(run_dir, name) / EXTRA_MODEL_FILE


def extra_metrics_path(run_dir: str | Path, name: str, *, postprocessed: bool = False) -> Path:
    """``metrics.csv`` (or ``metrics_postprocessed.csv``) of an extra row: metrics.csv's columns."""
    return extra_model_dir(run_dir, name) / (METRICS_POSTPROCESSED_FILE if postprocessed else METRICS_FILE)


def extra_prediction_path(run_dir: str | Path, name: str, case_id: str) -> Path:
    """``RUN_DIR/extra_models/<name>/predictions/<case_id>.nii.gz``: the row's segmentation of one case."""
    return extra_model_dir(run_dir, name) / PREDICTIONS_DIR / f"{case_id}{PREDICTION_SUFFIX}"


def iter_job_dirs(run_dir: str | Path) -> Iterator[tuple[JobKey, Path]]:
    """Every job folder that exists, with its key, sorted by (model, fold, repeat).

    A ``fold_<k>`` folder holding ``repeat_<r>`` folders yields one key per repeat (``repeats`` = at least 2, so that
    :func:`job_dir` of the key gives the folder back); otherwise it is the job folder of a one-repeat run. Folders
    whose name is not ``fold_<integer>`` / ``repeat_<integer>`` (and stray files) are skipped.
    """
    root = jobs_root(run_dir)
    if not root.is_dir():
        return
    found = []
    for folder in root.glob(f"*/{FOLD_PREFIX}*"):
        match = _FOLD_FOLDER.fullmatch(folder.name)
        if match is None or not folder.is_dir():
            continue
        repeats = [(int(m["repeat"]), sub) for sub in folder.iterdir()
                   if (m := _REPEAT_FOLDER.fullmatch(sub.name)) is not None and sub.is_dir()]  # fmt: skip
        model, fold = folder.parent.name, int(match["fold"])
        if not repeats:
            found.append((JobKey(model, fold), folder))
        count = max(2, max((r for r, _ in repeats), default=0) + 1)
        found += [(JobKey(model, fold, r, repeats=count), sub) for r, sub in repeats]
    yield from sorted(found, key=lambda item: item[0])
