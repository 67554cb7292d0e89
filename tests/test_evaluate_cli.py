"""`segbench evaluate` through the installed console script, on tiny real NIfTI folders."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from segbench.cli import main
from segbench.data.nifti import write_nifti
from segbench.evaluation import case_id_from_name, csv_columns
from segbench.metrics import compute_case_metrics

SPACING = (1.25, 1.25, 1.5)  # exactly representable in float32 NIfTI headers
AFFINE = np.diag([*SPACING, 1.0])
SHAPE = (20, 18, 16)


def reference(case: int) -> np.ndarray:
    ref = np.zeros(SHAPE, np.uint8)
    ref[4 + case : 12 + case, 5:13, 3:11] = 1
    return ref


def segbench(*args) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "segbench"), "evaluate", *map(str, args)]  # not from PATH
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """Three cases: a perfect prediction, one shifted by a voxel, and an empty one (a miss)."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    for case in range(3):
        ref = reference(case)
        pred = [ref, np.roll(ref, 1, axis=0), np.zeros_like(ref)][case]
        write_nifti(gt_dir / f"la_00{case}.nii.gz", ref, affine=AFFINE)
        write_nifti(pred_dir / f"la_00{case}.nii.gz", pred, affine=AFFINE)
    # Files a real nnU-Net / MSD folder holds next to the masks: ignored.
    (pred_dir / "summary.json").write_text("{}")
    (gt_dir / "._la_000.nii.gz").write_bytes(b"\0" * 10)
    return pred_dir, gt_dir


def test_csv_content_and_summary(folders, tmp_path):
    pred_dir, gt_dir = folders
    out = tmp_path / "metrics.csv"
    result = segbench(pred_dir, gt_dir, "--out", out, "--tolerance-mm", "1")
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert tuple(frame.columns) == csv_columns()
    assert frame["case_id"].tolist() == ["la_000", "la_001", "la_002"]
    assert frame["label"].tolist() == [1, 1, 1]
    assert frame["tolerance_mm"].eq(1.0).all()
    perfect, shifted, missed = (frame.iloc[i] for i in range(3))
    assert (perfect["dice"], perfect["hd"], perfect["nsd"]) == (1.0, 0.0, 1.0)
    expected = compute_case_metrics(np.roll(reference(1), 1, axis=0), reference(1), SPACING, tolerance_mm=1)[0]
    for key in ("dice", "hd", "hd95", "assd", "nsd", "pred_volume_ml", "ref_volume_ml", "diagonal_mm"):
        assert shifted[key] == pytest.approx(expected[key], rel=1e-6), key
    assert shifted["hd"] == pytest.approx(1.25, rel=1e-6)
    assert math.isinf(missed["hd95"]) and missed["dice"] == 0.0
    assert bool(missed["miss"]) and bool(missed["pred_empty"]) and not bool(missed["ref_empty"])
    assert missed["ref_volume_ml"] == pytest.approx(512 * 1.25 * 1.25 * 1.5 / 1000, rel=1e-6)

    assert "3 cases" in result.stdout and "1 miss" in result.stdout
    # The hd mean uses the diagonal as the penalty for the miss: (0 + 1.25 + diagonal) / 3.
    hd_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("hd "))
    assert f"{(1.25 + missed['diagonal_mm']) / 3:.4f}" in hd_line


def test_default_output_goes_to_the_prediction_folder(folders):
    pred_dir, gt_dir = folders
    result = segbench(pred_dir, gt_dir)
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(pred_dir / "metrics.csv")) == 3


def test_unmatched_files_are_listed(folders):
    pred_dir, gt_dir = folders
    write_nifti(pred_dir / "la_099.nii.gz", reference(0), affine=AFFINE)
    (gt_dir / "la_001.nii.gz").unlink()
    result = segbench(pred_dir, gt_dir, "--out", pred_dir / "m.csv")
    assert result.returncode == 1
    assert "la_099.nii.gz" in result.stderr and "no reference" in result.stderr
    assert "no prediction" not in result.stderr  # la_001 still has its prediction, only its reference is gone
    assert "la_001.nii.gz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (pred_dir / "m.csv").exists()


def test_missing_prediction_is_listed(folders):
    pred_dir, gt_dir = folders
    (pred_dir / "la_002.nii.gz").unlink()
    result = segbench(pred_dir, gt_dir)
    assert result.returncode == 1
    assert "no prediction" in result.stderr and "la_002.nii.gz" in result.stderr


def test_shape_mismatch_names_the_case(folders):
    pred_dir, gt_dir = folders
    write_nifti(pred_dir / "la_001.nii.gz", np.zeros((20, 18, 15), np.uint8), affine=AFFINE)
    result = segbench(pred_dir, gt_dir)
    assert result.returncode == 1
    assert "la_001" in result.stderr and "(20, 18, 15)" in result.stderr and "(20, 18, 16)" in result.stderr
    assert "Traceback" not in result.stderr


def test_geometry_mismatch_names_the_case(folders):
    pred_dir, gt_dir = folders
    shifted_origin = AFFINE.copy()
    shifted_origin[:3, 3] = [10.0, 0.0, 0.0]
    write_nifti(pred_dir / "la_002.nii.gz", reference(2), affine=shifted_origin)
    result = segbench(pred_dir, gt_dir)
    assert result.returncode == 1
    assert "la_002" in result.stderr and "affine" in result.stderr

    write_nifti(pred_dir / "la_002.nii.gz", reference(2), affine=np.diag([1.0, 1.25, 1.5, 1.0]))
    result = CliRunner().invoke(main, ["evaluate", str(pred_dir), str(gt_dir)])
    assert result.exit_code == 1
    assert "la_002" in result.output and "spacing" in result.output


def test_pred_suffix_and_labels(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    ref = reference(0)
    ref[14:18, 5:9, 3:7] = 2
    pred = ref.copy()
    pred[pred == 2] = 0  # label 2 missed
    write_nifti(gt_dir / "case_a.nii", ref, affine=AFFINE)
    write_nifti(pred_dir / "case_a_seg.nii.gz", pred, affine=AFFINE)
    out = tmp_path / "m.csv"

    unmatched = CliRunner().invoke(main, ["evaluate", str(pred_dir), str(gt_dir), "--out", str(out)])
    assert unmatched.exit_code == 1 and "case_a_seg.nii.gz" in unmatched.output and "--pred-suffix" in unmatched.output

    ok = CliRunner().invoke(
        main, ["evaluate", str(pred_dir), str(gt_dir), "--out", str(out), "--pred-suffix", "_seg", "--labels", "2,3"]
    )
    assert ok.exit_code == 0, ok.output
    frame = pd.read_csv(out)
    assert frame["case_id"].tolist() == ["case_a", "case_a"] and frame["label"].tolist() == [2, 3]
    assert bool(frame.loc[0, "miss"]) and bool(frame.loc[1, "pred_empty"]) and bool(frame.loc[1, "ref_empty"])

    inferred = CliRunner().invoke(
        main, ["evaluate", str(pred_dir), str(gt_dir), "--out", str(out), "--pred-suffix", "_seg"]
    )
    assert inferred.exit_code == 0, inferred.output
    assert pd.read_csv(out)["label"].tolist() == [1, 2]

    bad = CliRunner().invoke(main, ["evaluate", str(pred_dir), str(gt_dir), "--labels", "one"])
    assert bad.exit_code == 1 and "--labels" in bad.output


def test_labels_absent_from_a_case_still_get_rows(tmp_path):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    gt_dir.mkdir()
    with_two = reference(0)
    with_two[14:18, 5:9, 3:7] = 2
    for name, mask in (("a", with_two), ("b", reference(1))):
        write_nifti(gt_dir / f"{name}.nii.gz", mask, affine=AFFINE)
        write_nifti(pred_dir / f"{name}.nii.gz", mask, affine=AFFINE)
    result = CliRunner().invoke(main, ["evaluate", str(pred_dir), str(gt_dir)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(pred_dir / "metrics.csv")
    assert list(zip(frame["case_id"], frame["label"], strict=True)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    absent = frame.iloc[3]
    assert absent["dice"] == 1.0 and bool(absent["pred_empty"]) and bool(absent["ref_empty"]) and not absent["miss"]


def test_missing_folder_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nope"), str(tmp_path / "empty")])
    assert result.exit_code == 1 and "does not exist" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "empty"), str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no .nii.gz or .nii files" in result.output


@pytest.mark.parametrize(
    "name,suffix,expected",
    [
        ("la_003.nii.gz", "", "la_003"),
        ("la_003.nii", "", "la_003"),
        ("la_003_seg.nii.gz", "_seg", "la_003"),
        ("la_003.nii.gz", "_seg", "la_003"),
        ("._la_003.nii.gz", "", None),
        ("summary.json", "", None),
        ("_seg.nii.gz", "_seg", "_seg"),
    ],
)
def test_case_id_from_name(name, suffix, expected):
    assert case_id_from_name(name, suffix=suffix) == expected
