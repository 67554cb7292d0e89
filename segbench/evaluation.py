"""Score a folder of predicted NIfTI label maps against a folder of reference label maps.

Files are matched by case id: the file name without ``.nii.gz`` / ``.nii`` (and without an optional
prediction suffix such as MONAI's ``_seg``). Other files (``summary.json``, ``plans.json``, macOS ``._*``
resource forks, hidden files) are ignored. Every prediction must have a reference and vice versa; the
geometry (shape, spacing, affine) of each pair must agree, because predictions are scored in the reference
geometry. Metrics come from :func:`segbench.metrics.compute_case_metrics` with the reference spacing.

The library never prints: the CLI iterates :func:`evaluate_pair` over :func:`match_cases` with its own
progress bar, then calls :func:`complete_labels` and :func:`summarize`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from segbench.data.nifti import Volume, read_label
from segbench.errors import DatasetError
from segbench.metrics import (
    both_empty_metrics,
    compute_case_metrics,
    image_diagonal_mm,
    metric_catalogue,
    metric_keys,
    penalise,
    summarise,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SUMMARY_COLUMNS = ("label", "metric", "unit", "mean", "median", "cases", "misses")
# Predictions written by other tools may store the affine in float32: allow that much disagreement.
AFFINE_ATOL_MM = 1e-3
SPACING_RTOL = 1e-4
_MAX_LISTED = 10


@dataclass(frozen=True)
class CasePair:
    """A prediction file and its reference file, matched by ``case_id``."""

    case_id: str
    pred_path: Path
    ref_path: Path


@dataclass(frozen=True)
class CaseResult:
    """The metric rows of one case (each with ``case_id``) and the geometry needed to add missing labels."""

    case_id: str
    rows: list[dict]
    diagonal_mm: float


def case_id_from_name(name: str, *, suffix: str = "") -> str | None:
    """Case id of a NIfTI file name, or ``None`` for a file that is not a (visible) NIfTI file.

    ``la_003.nii.gz`` → ``la_003``; with ``suffix="_seg"``, ``la_003_seg.nii.gz`` → ``la_003``. A NIfTI name
    without the suffix keeps its full stem (and will then show up as unmatched).
    """
    if name.startswith("."):  # hidden files and macOS "._la_003.nii.gz" resource forks in MSD archives
        return None
    for extension in NIFTI_SUFFIXES:
        if name.endswith(extension):
            stem = name[: -len(extension)]
            if suffix and stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
            return stem
    return None


def _list_cases(folder: Path, *, suffix: str, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{role} folder {folder} does not exist or is not a folder")
    if (
        role == "reference"
        and (folder / "labelsTr").is_dir()
        and not any(case_id_from_name(p.name) for p in folder.iterdir())
    ):
        labels = folder / "labelsTr"
        raise DatasetError(f"reference folder {folder} is a dataset folder; pass its label folder {labels}")
    cases: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case_id = case_id_from_name(path.name, suffix=suffix)
        if case_id is None or not path.is_file():
            continue
        if case_id in cases:
            raise DatasetError(
                f"{role} folder {folder} has two files for case {case_id} ({cases[case_id].name}, {path.name}); "
                "keep one"
            )
        cases[case_id] = path
    if not cases:
        raise DatasetError(f"{role} folder {folder} contains no .nii.gz or .nii files")
    return cases


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown if len(names) <= _MAX_LISTED else f"{shown} and {len(names) - _MAX_LISTED} more"


def match_cases(
    pred_dir: str | Path, gt_dir: str | Path, *, pred_suffix: str = "", subset: bool = False
) -> list[CasePair]:
    """Pair every prediction in ``pred_dir`` with the reference of the same case id in ``gt_dir``.

    Args:
        pred_dir: folder of predicted label maps (``<case_id><pred_suffix>.nii.gz`` or ``.nii``).
        gt_dir: folder of reference label maps (``<case_id>.nii.gz`` or ``.nii``).
        pred_suffix: text between the case id and the extension in prediction names (e.g. ``_seg``).
        subset: score only the references that have a prediction (``--subset``); otherwise a reference without
            prediction is an error. A prediction without reference is always an error.

    Returns:
        Pairs sorted by case id.

    Raises:
        DatasetError: a folder is missing or holds no NIfTI files, a case has two files, or some predictions
            have no reference or some references no prediction (the message lists them).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds = _list_cases(pred_dir, suffix=pred_suffix, role="prediction")
    refs = _list_cases(gt_dir, suffix="", role="reference")
    no_ref = sorted(preds.keys() - refs.keys())
    no_pred = [] if subset else sorted(refs.keys() - preds.keys())
    if no_ref or no_pred:
        problems = []
        if no_ref:
            problems.append(f"{len(no_ref)} prediction(s) in {pred_dir} have no reference in {gt_dir}: "
                            f"{_listing([preds[c].name for c in no_ref])}")  # fmt: skip
        if no_pred:
            problems.append(f"{len(no_pred)} reference(s) in {gt_dir} have no prediction in {pred_dir}: "
                            f"{_listing([refs[c].name for c in no_pred])}")  # fmt: skip
        hint = "name predictions <case_id>.nii.gz like the references, or give --pred-suffix (e.g. _seg)"
        if no_pred:
            hint += ", or pass --subset to score only the cases that have a prediction"
        raise DatasetError("; ".join(problems) + f"; {hint}")
    return [CasePair(case_id, preds[case_id], refs[case_id]) for case_id in sorted(preds)]


def check_geometry(case_id: str, pred: Volume, ref: Volume) -> None:
    """Raise :class:`DatasetError` naming the case when shape, spacing or affine of the pair disagree."""
    fix = "predictions must be in the reference geometry (resample them back before evaluating)"
    if pred.array.shape != ref.array.shape:
        raise DatasetError(
            f"case {case_id}: prediction shape {pred.array.shape} differs from reference shape {ref.array.shape}; {fix}"
        )
    if not np.allclose(pred.spacing, ref.spacing, rtol=SPACING_RTOL, atol=0.0):
        raise DatasetError(
            f"case {case_id}: prediction spacing {tuple(round(s, 6) for s in pred.spacing)} mm differs from "
            f"reference spacing {tuple(round(s, 6) for s in ref.spacing)} mm; {fix}"
        )
    if not np.allclose(pred.affine, ref.affine, rtol=0.0, atol=AFFINE_ATOL_MM):
        worst = float(np.max(np.abs(pred.affine - ref.affine)))
        raise DatasetError(
            f"case {case_id}: prediction affine differs from the reference affine by up to {worst:.4g} mm; {fix}"
        )


def evaluate_pair(
    pair: CasePair,
    *,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
) -> CaseResult:
    """Read one pair, check its geometry and compute its metric rows (reference spacing).

    Args:
        pair: from :func:`match_cases`.
        labels: label values to score; ``None``: every nonzero value in the prediction or reference.
        tolerance_mm: NSD tolerance in mm.
        postprocess: applied to the predicted ``(D, H, W)`` label map before scoring (e.g. a run's postprocessing
            decision, :func:`segbench.postprocessing.apply_decision`); returns a label map of the same shape.

    Raises:
        DatasetError: unreadable files or a geometry mismatch (naming the case).
    """
    ref = read_label(pair.ref_path)
    pred = read_label(pair.pred_path)
    check_geometry(pair.case_id, pred, ref)
    array = pred.array if postprocess is None else postprocess(pred.array)
    rows = compute_case_metrics(array, ref.array, ref.spacing, labels=labels, tolerance_mm=tolerance_mm)
    return CaseResult(
        case_id=pair.case_id,
        rows=[{"case_id": pair.case_id, **row} for row in rows],
        diagonal_mm=image_diagonal_mm(ref.array.shape, ref.spacing),
    )


def absent_labels(frame: pd.DataFrame, labels: Sequence[int]) -> list[int]:
    """Labels of ``labels`` that are in no prediction and no reference of ``frame`` (every row of them empty)."""
    absent = []
    for label in labels:
        rows = frame[frame["label"] == label]
        if rows.empty or (rows["pred_empty"].astype(bool) & rows["ref_empty"].astype(bool)).all():
            absent.append(int(label))
    return absent


def csv_columns() -> tuple[str, ...]:
    """Columns of the per-case CSV: ``case_id`` then :func:`segbench.metrics.metric_keys` (the catalogue's order)."""
    return ("case_id", *metric_keys())


def complete_labels(results: Iterable[CaseResult], *, tolerance_mm: float) -> pd.DataFrame:
    """Per-case table with one row per (case, label) for every label seen anywhere.

    When labels were inferred per case, a label absent from both masks of a case still gets its row
    (dice 1, distances 0, flagged empty), so every case counts for every label.

    Returns:
        DataFrame with columns :func:`csv_columns`, sorted by case id and label.
    """
    results = list(results)
    all_labels = sorted({row["label"] for result in results for row in result.rows})
    rows = []
    for result in results:
        present = {row["label"] for row in result.rows}
        rows.extend(result.rows)
        for label in all_labels:
            if label not in present:
                empty = both_empty_metrics(label, diagonal_mm=result.diagonal_mm, tolerance_mm=tolerance_mm)
                rows.append({"case_id": result.case_id, **empty})
    frame = pd.DataFrame(rows, columns=list(csv_columns()))
    return frame.sort_values(["case_id", "label"], kind="stable").reset_index(drop=True)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Penalised mean and median of every catalogue metric per label, with misses counted.

    A miss (exactly one mask empty) has infinite distances; they count as the metric's stated penalty (for
    ``hd``, ``hd95`` and ``assd`` the case's ``diagonal_mm``) in both the mean and the median
    (:func:`segbench.metrics.penalise`), so misses are never dropped silently.

    Returns:
        One row per (label, metric), metrics in catalogue order: ``label, metric, unit, mean, median, cases,
        misses``.
    """
    records = []
    for label, group in frame.groupby("label", sort=True):
        misses = int(group["miss"].astype(bool).sum())
        diagonal = group["diagonal_mm"].astype(float).to_numpy()
        for metric in metric_catalogue():
            summary = summarise(penalise(metric, group[metric.name], diagonal))
            records.append({"label": int(label), "metric": metric.name, "unit": metric.unit, "mean": summary.mean,
                            "median": summary.median, "cases": summary.n, "misses": misses})  # fmt: skip
    return pd.DataFrame(records, columns=list(SUMMARY_COLUMNS))
