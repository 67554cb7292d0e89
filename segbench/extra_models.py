"""Extra rows of a run's report: models without jobs — ensembles of the run's models, and predictions made elsewhere.

Both kinds go through one mechanism (:func:`_add_row`): a segmentation per case of the run (every case is
out-of-fold once, in the fold splits.json gives it), scored with the run's metrics, the postprocessing rule decided on
these out-of-fold segmentations (:mod:`segbench.postprocessing`, as for every model), and stored in the run directory
so that every later ``segbench report`` shows the row::

    RUN_DIR/extra_models/<name>/
      predictions/<case_id>.nii.gz    the row's segmentation of each case (an external one: a copy, as .nii.gz)
      metrics.csv                     metrics.csv's columns (model = name, fold = the case's fold, repeat 0)
      metrics_postprocessed.csv       the same after the row's postprocessing decision
      extra_model.json                what the row is, written last (see docs/run-directory.md)

- *ensemble* (:func:`add_ensemble`, ``segbench ensemble``): the mean of the members' out-of-fold class probabilities
  per case (``--save-probabilities``), argmax; what nnU-Net's ``find_best_configuration`` does across configurations.
- *external* (:func:`add_external`, ``segbench report --add NAME=PRED_DIR``): label maps made elsewhere: nnU-Net's
  ``crossval_results_folds_*`` or ``cv_niftis_*`` folders (``<case_id>.nii.gz``), a MONAI bundle's output
  (``SaveImage``: ``<case_id>/<case_id>_seg.nii.gz``, or ``<case_id>_seg.nii.gz`` without ``separate_folder``; any
  postfix, and nnU-Net's ``_0000`` channel suffix in the name). Cases without a file are named and left out; the row
  then has fewer cases, as an incomplete model does.

Neither has jobs, so neither has cost figures; an external row's recipe is unknown.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segbench import results, rundir
from segbench.atomic import atomic_write_json, atomic_write_text
from segbench.config import RunConfig
from segbench.data.dataset import load_dataset
from segbench.data.nifti import Volume, read_label, write_nifti
from segbench.errors import ConfigError, DatasetError, RunDirectoryError
from segbench.evaluation import case_id_from_name, check_geometry
from segbench.postprocessing import Decision, apply_decision, decide
from segbench.probabilities import foreground_classes, missing_probabilities, read_probabilities
from segbench.run_postprocessing import score_case

__all__ = ["ENSEMBLE", "EXTERNAL", "ExtraModel", "add_ensemble", "add_external", "extra_metrics", "find_predictions",
           "load_extra_models"]  # fmt: skip

log = logging.getLogger(__name__)

ENSEMBLE, EXTERNAL = "ensemble", "external"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# What may follow "<case_id>_" in an external file's name: a postfix (MONAI's "seg"), nnU-Net's channel "0000", both.
_AFTER_CASE = re.compile(r"(?:[0-9]{4}_)?[A-Za-z][A-Za-z0-9]*|[0-9]{4}")
_LISTED = 10


@dataclass(frozen=True)
class ExtraModel:
    """One extra row as ``extra_model.json`` stores it.

    Attributes:
        name: the row's model name (unique among the run's models and extra rows).
        kind: :data:`ENSEMBLE` or :data:`EXTERNAL`.
        source: the members joined by ``+`` (ensemble) or the prediction folder it was read from (external).
        members: the ensembled models (empty for an external row).
        cases: the run's cases the row has a segmentation of; missing: those it has none of.
        decision: its postprocessing, decided on its own out-of-fold segmentations.
    """

    name: str
    kind: str
    source: str
    members: tuple[str, ...]
    cases: tuple[str, ...]
    missing: tuple[str, ...]
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "source": self.source, "members": list(self.members),
                "cases": list(self.cases), "missing": list(self.missing),
                "postprocessing": self.decision.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExtraModel:
        return cls(str(data["name"]), str(data["kind"]), str(data["source"]), tuple(map(str, data["members"])),
                   tuple(map(str, data["cases"])), tuple(map(str, data["missing"])),
                   Decision.from_json(data["postprocessing"]))  # fmt: skip

    def describe(self) -> str:
        """One line for the report: what the row is and which cases it lacks."""
        if self.kind == ENSEMBLE:
            text = f"{self.name}: ensemble of {', '.join(self.members)} (mean of their out-of-fold class probabilities)"
        else:
            text = f"{self.name}: external predictions from {self.source} (recipe unknown, no cost figures)"
        if self.missing:
            text += f"; {len(self.missing)} case(s) without a prediction: {_listing(self.missing)}"
        return text


@dataclass(frozen=True)
class _RunCases:
    """What scoring a row needs from the run: case → fold and reference file, labels, names, NSD tolerance."""

    run_dir: Path
    folds: dict[str, int]
    references: dict[str, Path]
    labels: tuple[int, ...]
    names: dict[int, str]
    tolerance_mm: float
    models: tuple[str, ...]


def _run_cases(run_dir: Path) -> _RunCases:
    if not rundir.manifest_path(run_dir).is_file():
        raise RunDirectoryError(f"{run_dir} has no {rundir.MANIFEST_FILE}; pass a RUN_DIR written by `segbench run`")
    manifest = results.load_manifest(run_dir)
    try:
        splits = json.loads(rundir.splits_path(run_dir).read_text(encoding="utf-8"))
        folds = {str(case): fold for fold, split in enumerate(splits) for case in split["val"]}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise RunDirectoryError(f"{rundir.splits_path(run_dir)} is unreadable ({exc}); the cases' folds come from "
                                "it") from None  # fmt: skip
    spec = load_dataset((manifest.get("dataset") or {}).get("path", ""))
    references = {case.case_id: case.label for case in spec.training if case.label is not None}
    tolerance = (manifest.get("config") or {}).get("tolerance_mm")
    return _RunCases(run_dir, {c: f for c, f in folds.items() if c in references}, references,
                     tuple(spec.foreground_labels), dict(spec.labels),
                     float(RunConfig().tolerance_mm if tolerance is None else tolerance),
                     tuple(str(m) for m in manifest.get("models") or []))  # fmt: skip


def _check_name(run: _RunCases, name: str, flag: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{flag} {name!r} is not a usable name: letters, digits and _ . + - only")
    if name in run.models:
        raise ConfigError(f"{flag} {name!r} is a model of the run; choose another name for the extra row")


def _add_row(
    run: _RunCases, *, name: str, kind: str, source: str, members: Sequence[str] = (),
    segmentations: Iterator[tuple[str, Callable[[Path], None]]],
) -> ExtraModel:  # fmt: skip
    """Store, score and postprocess one extra row (module docstring); replaces a row of the same name.

    Args:
        run: the run's cases (:func:`_run_cases`).
        segmentations: ``(case_id, write)`` per case that has a segmentation; ``write(path)`` writes it as NIfTI in
            the reference's geometry (checked here).

    Raises:
        DatasetError: no case, or a segmentation whose geometry differs from its reference (names the case).
    """
    folder = rundir.extra_model_dir(run.run_dir, name)
    staging = folder.with_name(f".{name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    rows, pairs = [], {}
    for case_id, write in segmentations:
        path = staging / rundir.PREDICTIONS_DIR / f"{case_id}{rundir.PREDICTION_SUFFIX}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        prediction, reference = read_label(path), read_label(run.references[case_id])
        check_geometry(case_id, prediction, reference)
        rows += _score(name, run, case_id, prediction.array, reference)
        pairs[case_id] = path
    if not pairs:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{name}: no segmentation of any case of the run ({_listing(sorted(run.folds))})")
    decision = decide((_pair(run, case, path) for case, path in sorted(pairs.items())), run.labels)
    processed = _postprocessed_rows(name, run, decision, pairs, rows)
    missing = tuple(sorted(set(run.folds) - set(pairs)))
    extra = ExtraModel(name, kind, source, tuple(members), tuple(sorted(pairs)), missing, decision)
    atomic_write_text(staging / rundir.METRICS_FILE, results.metrics_rows_table(rows).to_csv(index=False))
    atomic_write_text(staging / rundir.METRICS_POSTPROCESSED_FILE,
                      results.metrics_rows_table(processed).to_csv(index=False))  # fmt: skip
    atomic_write_json(staging / rundir.EXTRA_MODEL_FILE, extra.to_json())
    shutil.rmtree(folder, ignore_errors=True)  # the old row (if any) goes only once the new one is complete
    staging.replace(folder)
    if missing:
        log.warning("%s: %d case(s) of the run have no prediction: %s", name, len(missing), _listing(missing))
    return extra


def _score(name: str, run: _RunCases, case_id: str, prediction: np.ndarray, reference: Volume) -> list[dict]:
    """The row's metrics.csv rows of one case (fold: the case's fold in splits.json; repeat 0)."""
    identity = {"model": name, "fold": run.folds[case_id], "repeat": 0, "case_id": case_id}
    return score_case(identity, prediction, reference, labels=run.labels, names=run.names,
                      tolerance_mm=run.tolerance_mm)  # fmt: skip


def _pair(run: _RunCases, case_id: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_label(path).array, read_label(run.references[case_id]).array


def _postprocessed_rows(name: str, run: _RunCases, decision: Decision, pairs: dict[str, Path], rows: list) -> list:
    """metrics.csv rows after ``decision``: a case it leaves unchanged keeps its rows."""
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_case.setdefault(str(row["case_id"]), []).append(row)
    processed = []
    for case_id, path in sorted(pairs.items()):
        prediction = read_label(path).array
        after = apply_decision(prediction, decision)
        if np.array_equal(after, prediction):
            processed += by_case[case_id]
            continue
        processed += _score(name, run, case_id, after, read_label(run.references[case_id]))
    return processed


def add_ensemble(run_dir: str | Path, models: Sequence[str], *, name: str | None = None) -> ExtraModel:
    """Average the out-of-fold class probabilities of ``models`` per case and add the ensemble as a row.

    Each member's probabilities come from repeat 0's done jobs (the run's out-of-fold predictions).

    Raises:
        ConfigError: fewer than two distinct models, a model not in the run, or a bad ``name``.
        RunDirectoryError: a member lacks probabilities for some cases (names them and how to add them).
    """
    run = _run_cases(Path(run_dir))
    members = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
    if len(members) < 2:
        raise ConfigError(f"--models {','.join(models)}: an ensemble needs at least two different models")
    unknown = [m for m in members if m not in run.models]
    if unknown:
        raise ConfigError(f"--models: {', '.join(unknown)} not in the run (its models: {', '.join(run.models)})")
    name = name or "+".join(members)
    _check_name(run, name, "--name")
    sources = {member: _member_probabilities(run, member) for member in members}

    def average(case_id: str) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            total = sum(read_probabilities(sources[m][case_id]) for m in members)
            reference = read_label(run.references[case_id])
            labels = foreground_classes(total / len(members), run.labels)
            write_nifti(path, labels, affine=reference.affine, spacing=reference.spacing)

        return write

    cases = ((case_id, average(case_id)) for case_id in sorted(run.folds))
    return _add_row(run, name=name, kind=ENSEMBLE, source="+".join(members), members=members,
                           segmentations=cases)  # fmt: skip


def _member_probabilities(run: _RunCases, model: str) -> dict[str, Path]:
    """case id → probabilities file of every case of the run; refuses a model that lacks some (names them)."""
    found: dict[str, Path] = {}
    for result in results.scan_results(run.run_dir).results:
        if result.model != model or result.status != "done" or result.repeat != 0:
            continue
        lacking = set(missing_probabilities(run.run_dir, result))
        for case_id in (c for c in run.folds if run.folds[c] == result.fold and c not in lacking):
            path = rundir.probabilities_path(run.run_dir, result, case_id)
            if path.is_file():
                found[case_id] = path
    missing = sorted(set(run.folds) - set(found))
    if missing:
        raise RunDirectoryError(
            f"{model} has no class probabilities for {len(missing)} of the run's {len(run.folds)} cases "
            f"({_listing(missing)}): the ensemble needs every case; run with --save-probabilities (a finished run: "
            f"`segbench run --resume --out {run.run_dir} --save-probabilities` adds them from each job's final "
            "checkpoint; unfinished jobs need the same resume)"
        )
    return found


def find_predictions(folder: str | Path, case_ids: Sequence[str]) -> dict[str, Path]:
    """case id → label-map file of an external prediction folder (the layouts of the module docstring).

    Files of other cases (e.g. test images) and other subfolders (nnU-Net's ``postprocessed/``) are ignored.

    Raises:
        ConfigError: ``folder`` is not a folder. DatasetError: a case has two files (names both).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--add: {folder} is not a folder of predictions")
    ids = sorted(case_ids, key=len, reverse=True)  # the longest id first: "la_0031" before "la_003"
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir():
            owner = _case_of(path.name, ids)
            files = [(p, _case_of(case_id_from_name(p.name) or "", ids)) for p in sorted(path.iterdir())]
            files = [(p, case) for p, case in files if owner is not None and case == owner and p.is_file()]
        else:
            files = [(path, _case_of(case_id_from_name(path.name) or "", ids))]
        for file, case in files:
            if case is None:
                continue
            if case in found:
                raise DatasetError(f"--add: {folder} has two predictions of case {case} ({found[case]}, {file}); "
                                   "keep one")  # fmt: skip
            found[case] = file
    return found


def _case_of(stem: str, ids: Sequence[str]) -> str | None:
    for case_id in ids:
        if stem == case_id or (stem.startswith(case_id + "_") and _AFTER_CASE.fullmatch(stem[len(case_id) + 1 :])):
            return case_id
    return None


def add_external(run_dir: str | Path, name: str, folder: str | Path) -> ExtraModel:
    """Score label maps made elsewhere for the run's cases and add them as an external row.

    Raises:
        ConfigError: a bad ``name`` or ``folder``. DatasetError: no file names a case of the run, or a file is
            unreadable or in another geometry than its reference (names the case and the fix).
    """
    run = _run_cases(Path(run_dir))
    _check_name(run, name, "--add")
    files = find_predictions(folder, sorted(run.folds))
    if not files:
        raise DatasetError(
            f"--add {name}={folder}: no file names a case of the run (expected e.g. {next(iter(sorted(run.folds)))}"
            f"{rundir.PREDICTION_SUFFIX}, or MONAI's <case>/<case>_seg{rundir.PREDICTION_SUFFIX})"
        )

    def copy(source: Path) -> Callable[[Path], None]:
        def write(path: Path) -> None:
            volume: Volume = read_label(source)
            write_nifti(path, volume.array, affine=volume.affine, spacing=volume.spacing)

        return write

    cases = ((case_id, copy(path)) for case_id, path in sorted(files.items()))
    return _add_row(run, name=name, kind=EXTERNAL, source=str(Path(folder).resolve()), segmentations=cases)


def load_extra_models(run_dir: str | Path) -> list[ExtraModel]:
    """Every stored extra row, by name; an unreadable ``extra_model.json`` is skipped with a warning."""
    root = rundir.extra_models_root(run_dir)
    extras = []
    for path in sorted(root.glob(f"*/{rundir.EXTRA_MODEL_FILE}")) if root.is_dir() else ():
        try:
            extras.append(ExtraModel.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping the extra row in %s: %s is unreadable (%s)", path.parent, path.name, exc)
    return extras


def extra_metrics(run_dir: str | Path, extras: Sequence[ExtraModel], *, postprocessed: bool = False) -> pd.DataFrame:
    """The rows' metrics.csv (or metrics_postprocessed.csv) tables as one table with metrics.csv's columns."""
    frames = []
    for extra in extras:
        path = rundir.extra_metrics_path(run_dir, extra.name, postprocessed=postprocessed)
        try:
            frames.append(pd.read_csv(path, dtype=results.TEXT_DTYPES, keep_default_na=False, na_values=[""]))
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            log.warning("skipping %s (%s)", path, exc)
    if not frames:
        return pd.DataFrame(columns=list(results.metrics_columns()))
    return pd.concat(frames, ignore_index=True)


def _listing(cases: Sequence[str]) -> str:
    shown = ", ".join(cases[:_LISTED])
    return shown if len(cases) <= _LISTED else f"{shown} and {len(cases) - _LISTED} more"
