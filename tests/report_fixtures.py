"""Hand-built run directories with known values, for the report tests.

``make_run_dir`` writes what `segbench run` would leave behind (docs/run-directory.md): manifest.json,
splits.json, metrics.csv, jobs.csv, jobs/<model>/fold_<k>/training_log.csv and predictions/*.nii.gz, plus a
tiny real MSD dataset (16³ NIfTI files written with nibabel) that the manifest points to. Per-case metric
values come from a seeded generator, so tests read metrics.csv back and recompute expectations directly
with numpy/scipy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SHAPE = (16, 16, 16)
SPACING = (1.25, 1.25, 1.5)
CASES = tuple(f"la_{i:03d}" for i in range(3, 23))  # 20 cases, Task02-like ids
# Mean Dice offset of each model: unet is clearly better than fcn, as in the tutorial.
MODEL_OFFSET = {"fcn": -0.06, "unet": 0.0}


def _write_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(array, np.diag([*SPACING, 1.0]))
    img.header.set_zooms(SPACING)
    nib.save(img, str(path))


def ball(shift: int = 0) -> np.ndarray:
    """``uint8`` 16³ label map of a ball of radius 4, shifted by ``shift`` voxels along the first axis."""
    grid = np.indices(SHAPE, dtype=float)
    centre = np.array([7.5 + shift, 7.5, 7.5])
    dist2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    return (dist2 <= 16.0).astype(np.uint8)


def write_dataset(root: Path, cases: Sequence[str] = CASES) -> Path:
    """A tiny MSD task folder (dataset.json, imagesTr, labelsTr) whose every label is :func:`ball`."""
    rng = np.random.default_rng(0)
    label = ball()
    for case in cases:
        image = (100.0 * label + rng.normal(0, 10, SHAPE)).astype(np.float32)
        _write_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        _write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    meta = {
        "name": "Task02_Heart",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "left atrium"},
        "numTraining": len(cases),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def metric_rows(
    models: Sequence[str], folds: Sequence[Sequence[str]], *, skip: Iterable[tuple[str, int]] = (), seed: int = 0
) -> list[dict]:
    """metrics.csv rows with seeded values; the first case of ``fcn`` (if present) is a miss (empty prediction)."""
    rng = np.random.default_rng(seed)
    cases = [c for fold in folds for c in fold]
    base = dict(zip(sorted(cases), rng.uniform(0.72, 0.9, len(cases)), strict=True))
    diagonal = math.dist((0, 0, 0), [n * s for n, s in zip(SHAPE, SPACING, strict=True)])
    skip = set(skip)
    rows = []
    for model in models:
        noise = np.random.default_rng([seed, len(model), sum(map(ord, model))])
        for fold, val in enumerate(folds):
            if (model, fold) in skip:
                continue
            for case in val:
                dice = float(np.clip(base[case] + MODEL_OFFSET.get(model, -0.03) + noise.normal(0, 0.02), 0, 1))
                hd95 = round(30 * (1 - dice) + noise.uniform(0, 1), 4)
                miss = model == "fcn" and case == sorted(cases)[0]
                rows.append({
                    "model": model, "fold": fold, "case_id": case, "label": 1, "label_name": "left atrium",
                    "dice": 0.0 if miss else round(dice, 4), "hd": math.inf if miss else hd95 + 2,
                    "hd95": math.inf if miss else hd95, "assd": math.inf if miss else round(hd95 / 3, 4),
                    "nsd": 0.0 if miss else round(min(1.0, dice + 0.05), 4), "tolerance_mm": 2.0,
                    "pred_volume_ml": 0.0 if miss else 0.33, "ref_volume_ml": 0.33, "pred_empty": miss,
                    "ref_empty": False, "miss": miss, "diagonal_mm": round(diagonal, 4),
                })  # fmt: skip
    return rows


def job_row(model: str, fold: int, status: str = "done", reason: str = "") -> dict:
    """A jobs.csv row with plausible costs; fcn is cheaper and faster than unet."""
    small = model == "fcn"
    return {
        "model": model, "fold": fold, "status": status, "reason": reason, "family": model,
        "params": 120_000 if small else 1_900_000, "mflop_per_voxel_forward": 0.5 if small else 2.5,
        "mflop_per_voxel_train": 1.5 if small else 7.5, "device": "cpu", "batch_size": 2,
        "patch_size": "16x16x16", "iterations": 100, "train_seconds": 40.0 + fold if small else 90.0 + fold,
        "train_iters_per_s": 2.5 if small else 1.1, "train_voxels_per_s": 20480.0 if small else 9011.2,
        "data_wait_share": 0.1, "achieved_gflop_per_s": 3.0, "peak_gpu_mem_allocated_mb": None,
        "peak_gpu_mem_reserved_mb": None, "peak_rss_mb": 800.0 + fold if small else 1500.0 + fold,
        "tensor_peak_mb": 50.0 if small else 120.0 + 10 * fold,
        "inference_seconds_per_case": 0.2 if small else 0.5, "final_loss": 0.3, "num_val_cases": 4,
    }  # fmt: skip


def make_run_dir(
    root: Path,
    *,
    models: Sequence[str] = ("fcn", "unet"),
    n_folds: int = 5,
    cases: Sequence[str] = CASES,
    failed: Mapping[tuple[str, int], tuple[str, str]] | None = None,
    missing: Iterable[tuple[str, int]] = (),
    dataset: bool = True,
    seed: int = 0,
) -> Path:
    """Write a complete run directory under ``root/run`` (and the dataset under ``root/data``).

    Args:
        models, n_folds, cases: the grid; fold k validates ``cases[k::n_folds]``.
        failed: (model, fold) → (status, reason) for jobs that ran but did not finish (no metrics).
        missing: (model, fold) jobs with no trace at all (no jobs.csv row, no metrics, no folder).
        dataset: write the MSD dataset the manifest points to (otherwise the path does not exist).
    """
    failed = dict(failed or {})
    missing = set(missing)
    run = root / "run"
    run.mkdir(parents=True)
    data = write_dataset(root / "data", cases) if dataset else root / "data_not_here"
    folds = [list(cases[k::n_folds]) for k in range(n_folds)]
    splits = [{"train": sorted(set(cases) - set(val)), "val": val} for val in folds]
    (run / "splits.json").write_text(json.dumps(splits, indent=2), encoding="utf-8")
    manifest = {
        "segbench_version": "0.1.0",
        "created_at": "2025-01-01T00:00:00+00:00",
        "command": f"segbench run --folds {n_folds}",
        "config": {
            "models": list(models),
            "folds": n_folds,
            "splits": "kfold",
            "iterations": 100,
            "patch_size": [16, 16, 16],
            "batch_size": 2,
            "lr": 0.001,
            "seed": 0,
        },  # fmt: skip
        "dataset": {
            "path": str(data),
            "name": "Task02_Heart",
            "format": "msd",
            "fingerprint": "abc123",
            "num_training": len(cases),
            "labels": {"1": "left atrium"},
        },  # fmt: skip
        "models": list(models),
        "environment": {"torch": "2.13.0", "device": "cpu", "cpu": "test cpu", "gpu": None, "git_commit": "deadbeef"},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    rows = metric_rows(models, folds, skip=set(failed) | missing, seed=seed)
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    jobs = []
    for model in models:
        for fold in range(n_folds):
            if (model, fold) in missing:
                continue
            status, reason = failed.get((model, fold), ("done", ""))
            jobs.append(job_row(model, fold, status, reason))
            job = run / "jobs" / model / f"fold_{fold}"
            job.mkdir(parents=True)
            iterations = np.arange(0, 101, 10)
            loss = np.exp(-iterations / (40 if model == "unet" else 60)) + 0.05 * fold
            pd.DataFrame({"iteration": iterations, "loss": loss.round(5), "lr": 0.001,
                          "wall_s": iterations * 0.4}).to_csv(job / "training_log.csv", index=False)  # fmt: skip
            if status != "done":
                continue
            for case in folds[fold]:
                miss = model == "fcn" and case == sorted(cases)[0]
                prediction = np.zeros(SHAPE, np.uint8) if miss else ball(0 if model == "unet" else 1)
                _write_nifti(job / "predictions" / f"{case}.nii.gz", prediction)
    pd.DataFrame(jobs).to_csv(run / "jobs.csv", index=False)
    return run


def add_island(path: Path) -> None:
    """A 3×3×3 false-positive island in a far corner of the prediction at ``path``."""
    image = nib.load(path)
    array = np.asarray(image.dataobj).astype(np.uint8)
    array[0:3, 0:3, 0:3] = 1
    nib.save(nib.Nifti1Image(array, image.affine, image.header), str(path))


def write_job_results(run: Path) -> None:
    """result.json of every job with a predictions folder, its metrics computed from its files (as a job does)."""
    from segbench import results, rundir
    from segbench.data.nifti import read_label
    from segbench.metrics import compute_case_metrics

    labels = run.parent / "data" / "labelsTr"
    for folder in sorted((run / "jobs").glob("*/fold_*")):
        key = rundir.JobKey(folder.parent.name, int(folder.name.removeprefix("fold_")))
        rows = []
        for path in sorted(rundir.predictions_dir(run, key).glob("*.nii.gz")):
            case_id = path.name.removesuffix(".nii.gz")
            reference = read_label(labels / path.name)
            for row in compute_case_metrics(read_label(path).array, reference.array, reference.spacing, labels=(1,),
                                            tolerance_mm=2.0):  # fmt: skip
                rows.append({"model": key.model, "fold": key.fold, "repeat": 0, "case_id": case_id,
                             "label_name": "left atrium", **row})  # fmt: skip
        status = "done" if rows else "failed"
        result = results.JobResult.for_job(key, status, "" if rows else "crashed", {"num_val_cases": len(rows)}, rows)
        results.write_job_result(run, result)
    results.rebuild_tables(run)
