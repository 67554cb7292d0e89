"""A run's postprocessing: decided once per model when its folds are done, stored, and scored like the raw predictions.

After the jobs, :func:`postprocess_run` decides each model's postprocessing (:mod:`segbench.postprocessing`, the same
rule for every model) on its out-of-fold predictions (repeat 0's, as in ``RUN_DIR/predictions/<model>/``), applies it
to the predictions of every done job of the model and scores them with the run's metrics::

    RUN_DIR/postprocessing.json         {"rule": ..., "models": {model: {"inputs": digest, <Decision.to_json()>}}}
    RUN_DIR/metrics_postprocessed.csv   metrics.csv's columns: the postprocessed predictions' rows

A model is decided only when every fold of repeat 0 is ``done`` (the rule needs all its out-of-fold cases). ``inputs``
is a digest of what a decision depends on (the model's prediction files, the dataset fingerprint, the labels, the NSD
tolerance and the rule): a later call (``segbench run --resume``) keeps a decision and its rows while it matches and
redoes them when it changed. A case whose prediction the decision leaves as it is keeps its metrics.csv rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbench import results, rundir
from segbench.atomic import atomic_write_json, atomic_write_text
from segbench.config import RunConfig
from segbench.data.dataset import load_dataset
from segbench.data.nifti import Volume, read_label
from segbench.evaluation import check_geometry
from segbench.metrics import compute_case_metrics
from segbench.postprocessing import RULE, Decision, apply_decision, decide
from segbench.progress import log as progress_log

__all__ = [
    "ModelPredictions",
    "current_decision",
    "load_decisions",
    "model_predictions",
    "postprocess_run",
    "score_case",
    "score_postprocessed",
    "stored_decision",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPredictions:
    """What one model's postprocessing is decided on and applied to.

    Attributes:
        run_dir, model: the run directory and the model name.
        out_of_fold: case id → prediction file of repeat 0's done jobs (every case once).
        jobs: the model's done jobs (every repeat), each scored after postprocessing.
        references: case id → reference label file.
        labels: the dataset's foreground labels; names: label value → name.
        tolerance_mm: the run's NSD tolerance.
        digest: SHA-256 (hex) of everything a decision and its scores depend on.
    """

    run_dir: Path
    model: str
    out_of_fold: dict[str, Path]
    jobs: tuple[results.JobResult, ...]
    references: dict[str, Path]
    labels: tuple[int, ...]
    names: dict[int, str]
    tolerance_mm: float
    digest: str

    def oof_cases(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(prediction, reference)`` label maps of every out-of-fold case, read one at a time."""
        for case_id, path in sorted(self.out_of_fold.items()):
            yield _read_pair(case_id, path, self.references[case_id])


def _read_pair(case_id: str, prediction_path: Path, reference_path: Path) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = read_label(prediction_path), read_label(reference_path)
    check_geometry(case_id, prediction, reference)
    return prediction.array, reference.array


def model_predictions(
    run_dir: Path, manifest: dict[str, Any], found: list[results.JobResult], model: str
) -> ModelPredictions | None:
    """The model's predictions when every fold of its repeat 0 is done; ``None`` otherwise (nothing to decide on).

    Raises:
        DatasetError: the run's dataset cannot be read (its references are needed).
    """
    folds = _fold_count(run_dir, manifest)
    done = tuple(r for r in found if r.model == model and r.status == "done")
    if folds == 0 or {r.fold for r in done if r.repeat == 0} != set(range(folds)):
        return None
    spec = load_dataset((manifest.get("dataset") or {}).get("path", ""))
    references = {case.case_id: case.label for case in spec.training if case.label is not None}
    out_of_fold = {}
    for result in (r for r in done if r.repeat == 0):
        for path in sorted(rundir.predictions_dir(run_dir, result).glob(f"*{rundir.PREDICTION_SUFFIX}")):
            out_of_fold[path.name[: -len(rundir.PREDICTION_SUFFIX)]] = path
    out_of_fold = {case: path for case, path in out_of_fold.items() if case in references}
    if not out_of_fold:
        return None
    stored_tolerance = (manifest.get("config") or {}).get("tolerance_mm")
    tolerance = float(RunConfig().tolerance_mm if stored_tolerance is None else stored_tolerance)
    labels = tuple(spec.foreground_labels)
    digest = hashlib.sha256(json.dumps([RULE, list(labels), tolerance, (manifest.get("dataset") or {}).get(
        "fingerprint")]).encode())  # fmt: skip
    for result in done:
        for path in sorted(rundir.predictions_dir(run_dir, result).glob(f"*{rundir.PREDICTION_SUFFIX}")):
            digest.update(f"{result.fold}/{result.repeat}/{path.name}:".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return ModelPredictions(run_dir, model, out_of_fold, done, references, labels, dict(spec.labels), tolerance,
                            digest.hexdigest())  # fmt: skip


def _fold_count(run_dir: Path, manifest: dict[str, Any]) -> int:
    try:
        return len(json.loads(rundir.splits_path(run_dir).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return int((manifest.get("config") or {}).get("folds") or 0)


def load_decisions(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """``postprocessing.json``'s models (model → stored entry); empty when the file is missing or unreadable."""
    path = rundir.postprocessing_path(run_dir)
    try:
        models = json.loads(path.read_text(encoding="utf-8")).get("models")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is unreadable (%s); the postprocessing decisions are made again", path, exc)
        return {}
    return {str(k): v for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else {}


def stored_decision(entry: dict[str, Any] | None) -> Decision | None:
    """The :class:`Decision` of a stored entry; ``None`` for a missing or malformed one."""
    try:
        return Decision.from_json(entry) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


def current_decision(run_dir: str | Path, model: str) -> tuple[Decision | None, str]:
    """The model's decision as it holds for the run directory now, without writing anything, and where it came from.

    The stored one while its inputs are unchanged (``"stored"``); otherwise decided now (``"decided now"``), when the
    model's folds are all done; ``(None, why)`` when they are not.
    """
    run_dir = Path(run_dir)
    found = results.scan_results(run_dir).results
    inputs = model_predictions(run_dir, results.load_manifest(run_dir), found, model)
    if inputs is None:
        return None, "its folds are not all done"
    entry = load_decisions(run_dir).get(model) or {}
    decision = stored_decision(entry) if entry.get("inputs") == inputs.digest else None
    if decision is not None:
        return decision, "stored"
    return decide(inputs.oof_cases(), inputs.labels), "decided now"


def score_postprocessed(inputs: ModelPredictions, decision: Decision) -> list[dict[str, Any]]:
    """metrics.csv rows of every done job's predictions after ``decision``; a case left unchanged keeps its rows."""
    rows: list[dict[str, Any]] = []
    for result in inputs.jobs:
        raw = {}
        for row in result.metrics:
            raw.setdefault(str(row.get("case_id")), []).append({**row, "repeat": result.repeat})
        if not decision.applied:
            rows += [row for case_rows in raw.values() for row in case_rows]
            continue
        rows += _score_job(inputs, decision, result, raw)
    return rows


def _score_job(inputs: ModelPredictions, decision: Decision, result: results.JobResult,
               raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    job = {"model": result.model, "fold": result.fold, "repeat": result.repeat}
    for case_id in sorted(raw):
        path = rundir.prediction_path(inputs.run_dir, result, case_id)
        if case_id not in inputs.references or not path.is_file():
            log.warning("%s: no prediction file for case %s; its postprocessed rows are missing", result.model, case_id)
            continue
        prediction = read_label(path)
        processed = apply_decision(prediction.array, decision)
        if np.array_equal(processed, prediction.array):
            rows += raw[case_id]  # unchanged by the rule: the same metrics
            continue
        reference = read_label(inputs.references[case_id])
        check_geometry(case_id, prediction, reference)
        rows += score_case({**job, "case_id": case_id}, processed, reference, labels=inputs.labels,
                           names=inputs.names, tolerance_mm=inputs.tolerance_mm)  # fmt: skip
    return rows


def score_case(
    identity: dict[str, Any], prediction: np.ndarray, reference: Volume, *, labels: tuple[int, ...],
    names: dict[int, str], tolerance_mm: float,
) -> list[dict[str, Any]]:  # fmt: skip
    """metrics.csv rows of one case (one per label): ``identity`` (model, fold, repeat, case_id), the label's name and
    :func:`segbench.metrics.compute_case_metrics` of ``prediction`` ``(D, H, W)`` against ``reference``."""
    scored = compute_case_metrics(prediction, reference.array, reference.spacing, labels=labels,
                                  tolerance_mm=tolerance_mm)  # fmt: skip
    return [{**identity, "label_name": names.get(row["label"], ""), **row} for row in scored]


def postprocess_run(run_dir: str | Path, *, found: list[results.JobResult] | None = None) -> dict[str, Decision]:
    """Decide, store and score the postprocessing of every model of the run whose folds are all done.

    Args:
        run_dir: a run directory (docs/run-directory.md).
        found: its job results when the caller has just read them (:func:`segbench.results.scan_results`).

    Returns:
        model → decision, for the models that have one.

    Raises:
        DatasetError: the run's dataset (the references) cannot be read; OSError: a file could not be written
            (the previous files are left whole).
    """
    run_dir = Path(run_dir)
    manifest = results.load_manifest(run_dir)
    found = results.scan_results(run_dir).results if found is None else found
    stored, table = load_decisions(run_dir), results.load_postprocessed_metrics(run_dir)
    scored = set(table["model"].astype(str)) if "model" in table else set()
    entries, rows, decisions = {}, [], {}
    for model in [str(m) for m in manifest.get("models") or []]:
        inputs = model_predictions(run_dir, manifest, found, model)
        if inputs is None:
            continue
        entry = stored.get(model) or {}
        decision = stored_decision(entry) if entry.get("inputs") == inputs.digest and model in scored else None
        if decision is not None:
            rows += table[table["model"].astype(str) == model].to_dict("records")
        else:
            decision = decide(inputs.oof_cases(), inputs.labels)
            rows += score_postprocessed(inputs, decision)
            progress_log.info("%s: postprocessing decided on %d out-of-fold cases: %s (mean foreground Dice %.4f -> "
                              "%.4f)", model, decision.cases, decision.describe(), decision.foreground_before,
                              decision.foreground_after)  # fmt: skip
        entries[model] = {"inputs": inputs.digest, **decision.to_json()}
        decisions[model] = decision
    if entries == stored and set(entries) == scored:
        return decisions  # nothing changed: no rewrite
    # The table first: a decision whose rows are missing is made again, never trusted without them.
    atomic_write_text(rundir.postprocessed_metrics_path(run_dir), results.metrics_rows_table(rows).to_csv(index=False))
    atomic_write_json(rundir.postprocessing_path(run_dir), {"rule": RULE, "models": entries})
    return decisions
