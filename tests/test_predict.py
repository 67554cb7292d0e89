"""``segbench predict``: a model's fold ensemble on new images (issue 25, item 2).

One tiny 2-fold run (resampled to a target spacing, so inputs of other geometries go through resampling both ways)
serves every test: the segmentations keep each input's shape, affine and header (LPS and anisotropic inputs
included), a single fold's network reproduces that fold's out-of-fold predictions exactly, the ensemble averages the
networks' logits, nnU-Net-style and MSD-style folders give the same result, and unfinished or altered folds are refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from segbench.data.synth import make_synthetic_task
from segbench.errors import DatasetError
from segbench.postprocessing import apply_decision
from segbench.predict import input_cases
from segbench.run_postprocessing import current_decision

SEGBENCH = Path(sys.executable).parent / "segbench"


def _segbench(*args: str, env_cache: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, SEGBENCH_CACHE=str(env_cache), OMP_NUM_THREADS="1")
    return subprocess.run([str(SEGBENCH), *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run dir, dataset, cache): fcn on 6 tiny cases, 2 folds, resampled to 1.5 mm."""
    root = tmp_path_factory.mktemp("predict")
    data = make_synthetic_task(root / "Task", cases=6, test_cases=3, seed=5, shape=(24, 24, 16), test_labels=True)
    out = root / "run"
    result = _segbench("run", "--data", str(data), "--models", "fcn", "--folds", "2", "--iterations", "6",
                       "--patch", "16", "16", "16", "--target-spacing", "1.5", "1.5", "1.5", "--out", str(out), "-q",
                       "--no-report", env_cache=root / "cache")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out, data, root / "cache"


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _predict(run: Path, cache: Path, *args: str) -> subprocess.CompletedProcess:
    result = _segbench("predict", str(run), "--model", "fcn", *args, env_cache=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_test_cases_keep_their_shape_affine_and_header(finished_run, tmp_path):
    run, data, cache = finished_run
    result = _predict(run, cache, "--test", "--out", str(tmp_path / "pred"))
    assert "3 segmentation(s) of fcn written" in result.stdout
    for source in sorted((data / "imagesTs").glob("*.nii.gz")):
        written, original = nib.load(str(tmp_path / "pred" / source.name)), nib.load(str(source))
        assert written.shape == original.shape[:3] and written.get_data_dtype() == np.uint8
        np.testing.assert_allclose(written.affine, original.affine)
        assert written.header.get_zooms() == original.header.get_zooms()[:3]
        assert set(np.unique(_array(tmp_path / "pred" / source.name))) <= {0, 1}


@pytest.mark.slow
def test_lps_and_anisotropic_inputs_come_back_on_their_own_grid(finished_run, tmp_path):
    run, data, cache = finished_run
    source = sorted((data / "imagesTs").glob("*.nii.gz"))[0]
    image = nib.load(str(source))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine  # the same voxels, LPS world axes
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), lps), inputs / "lps.nii.gz")
    anisotropic = np.diag([0.8, 0.8, 3.0, 1.0])  # thick slices: resampled to 1.5 mm and back
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, :10], anisotropic), inputs / "thick.nii.gz")
    _predict(run, cache, str(inputs), "--out", str(tmp_path / "pred"))
    for name in ("lps", "thick"):
        written = nib.load(str(tmp_path / "pred" / f"{name}.nii.gz"))
        original = nib.load(str(inputs / f"{name}.nii.gz"))
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine)
    # LPS only relabels the world axes: the voxels, and so the segmentation, are those of the RAS original
    _predict(run, cache, str(source.parent), "--out", str(tmp_path / "ras"))
    np.testing.assert_array_equal(_array(tmp_path / "pred" / "lps.nii.gz"), _array(tmp_path / "ras" / source.name))


@pytest.mark.slow
def test_one_fold_reproduces_its_out_of_fold_predictions_and_the_ensemble_averages_logits(finished_run, tmp_path):
    run, data, cache = finished_run
    splits = json.loads((run / "splits.json").read_text())
    images = data / "imagesTr"
    for fold, split in enumerate(splits):
        _predict(run, cache, str(images), "--folds", str(fold), "--out", str(tmp_path / f"fold{fold}"),
                 "--no-postprocessing")  # fmt: skip
        for case_id in split["val"]:
            oof = run / "jobs" / "fcn" / f"fold_{fold}" / "predictions" / f"{case_id}.nii.gz"
            np.testing.assert_array_equal(_array(tmp_path / f"fold{fold}" / f"{case_id}.nii.gz"), _array(oof))
    # By default the model's postprocessing, decided on its folds, is applied to the ensemble's segmentation
    decision, source = current_decision(run, "fcn")
    assert source == "stored"
    _predict(run, cache, str(images), "--folds", "0", "--out", str(tmp_path / "postprocessed"))
    for case_id in splits[0]["val"]:
        raw = _array(tmp_path / "fold0" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(_array(tmp_path / "postprocessed" / f"{case_id}.nii.gz"),
                                      apply_decision(raw, decision))  # fmt: skip
    # An input at the run's spacing is not resampled: its probabilities are the sigmoid of the networks' logits
    source = images / f"{splits[0]['val'][0]}.nii.gz"
    at_run_spacing = tmp_path / "at_run_spacing"
    at_run_spacing.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(source)).dataobj), np.diag([1.5, 1.5, 1.5, 1.0])),
             at_run_spacing / "case.nii.gz")  # fmt: skip
    for folds, folder in (("0", "p0"), ("1", "p1"), ("0,1", "both")):
        _predict(run, cache, str(at_run_spacing), "--folds", folds, "--out", str(tmp_path / folder),
                 "--save-probabilities")  # fmt: skip

    def logit(folder: str) -> np.ndarray:
        p = np.load(tmp_path / folder / "case.npz")["probabilities"].astype(np.float64)
        return np.log(p / (1 - p))

    np.testing.assert_allclose(logit("both"), (logit("p0") + logit("p1")) / 2, atol=1e-4)
    assert np.abs(logit("p0") - logit("p1")).max() > 0.01  # two different networks: the average is a real test


@pytest.mark.slow
def test_nnunet_style_and_msd_style_folders_give_the_same_segmentations(finished_run, tmp_path):
    run, data, cache = finished_run
    nnunet_style = tmp_path / "imagesTs"
    nnunet_style.mkdir()
    for source in (data / "imagesTs").glob("*.nii.gz"):
        shutil.copy(source, nnunet_style / source.name.replace(".nii.gz", "_0000.nii.gz"))
    (nnunet_style / "._junk_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata of the public release
    _predict(run, cache, str(nnunet_style), "--out", str(tmp_path / "a"))
    _predict(run, cache, str(data / "imagesTs"), "--out", str(tmp_path / "b"))
    names = sorted(p.name for p in (tmp_path / "b").glob("*.nii.gz"))
    assert sorted(p.name for p in (tmp_path / "a").glob("*.nii.gz")) == names
    for name in names:
        np.testing.assert_array_equal(_array(tmp_path / "a" / name), _array(tmp_path / "b" / name))


@pytest.mark.slow
def test_unfinished_or_altered_folds_are_refused_with_the_way_out(finished_run, tmp_path):
    run, data, cache = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "jobs" / "fcn" / "fold_1" / "result.json").unlink()
    result = _segbench("predict", str(copy), "--model", "fcn", "--test", "--out", str(tmp_path / "x"), env_cache=cache)
    assert result.returncode == 1
    assert "fcn has no finished job for fold 1" in result.stderr and "pass --folds 0" in result.stderr
    _predict(copy, cache, "--test", "--folds", "0", "--out", str(tmp_path / "fold0"))
    ledger = copy / "jobs" / "fcn" / "fold_0" / "predictions.json"
    ledger.write_text(json.dumps({"weights": "0123456789abcdef"}))
    result = _segbench("predict", str(copy), "--model", "fcn", "--test", "--folds", "0", "--out", str(tmp_path / "y"),
                       env_cache=cache)  # fmt: skip
    assert result.returncode == 1 and "is not the network that made its out-of-fold predictions" in result.stderr
    result = _segbench("predict", str(copy), "--model", "unet", "--test", "--out", str(tmp_path / "z"), env_cache=cache)
    assert result.returncode == 1 and "has no model 'unet'; its models are fcn" in result.stderr


def test_input_folders_are_read_nnunet_style_only_when_every_case_has_every_channel(tmp_path):
    for name in ("a_0000", "a_0001", "b_0000", "b_0001"):
        (tmp_path / f"{name}.nii.gz").write_bytes(b"")
    cases = input_cases(tmp_path, channels=2)
    assert [(c.case_id, [p.name for p in c.images]) for c in cases] == [
        ("a", ["a_0000.nii.gz", "a_0001.nii.gz"]),
        ("b", ["b_0000.nii.gz", "b_0001.nii.gz"]),
    ]
    # one channel expected: "la_0001" is then an MSD case name, not channel 1 of case "la"
    assert [c.case_id for c in input_cases(tmp_path, channels=1)] == ["a_0000", "a_0001", "b_0000", "b_0001"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no .nii.gz image"):
        input_cases(tmp_path / "empty", channels=1)
    with pytest.raises(DatasetError, match="is not a folder of images"):
        input_cases(tmp_path / "a_0000.nii.gz", channels=1)


@pytest.mark.slow
def test_a_labelled_test_set_is_scored_into_the_run_and_reported_apart_from_the_folds(finished_run, tmp_path):
    run, data, cache = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    metrics_before = (copy / "metrics.csv").read_text()
    result = _predict(copy, cache, "--test", "--evaluate", "--out", str(tmp_path / "pred"))
    assert "test set, label 1: dice mean" in result.stdout and "(3 cases, " in result.stdout
    scores = pd.read_csv(copy / "test_metrics.csv", dtype={"case_id": str})
    assert sorted(scores["case_id"]) == sorted(p.name.removesuffix(".nii.gz") for p in (data / "labelsTs").iterdir())
    assert set(scores["model"]) == {"fcn"} and set(scores["folds"].astype(str)) == {"0,1"}
    assert scores["dice"].between(0, 1).all()
    assert (copy / "metrics.csv").read_text() == metrics_before  # the cross-validation's tables are untouched
    report = _segbench("report", str(copy), env_cache=cache)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (copy / "report" / "report.md").read_text()
    assert "## Held-back test set" in text and "take no part in the leaderboard" in text
    # scoring again replaces the model's rows instead of adding to them
    _predict(copy, cache, "--test", "--evaluate", "--folds", "0", "--out", str(tmp_path / "pred0"))
    again = pd.read_csv(copy / "test_metrics.csv", dtype={"case_id": str, "folds": str})
    assert len(again) == len(scores) and set(again["folds"]) == {"0"}


@pytest.mark.slow
def test_evaluate_needs_the_test_labels_and_the_test_flag(finished_run, tmp_path):
    run, data, cache = finished_run
    result = _segbench("predict", str(run), "--model", "fcn", str(data / "imagesTs"), "--evaluate", "--out",
                       str(tmp_path / "a"), env_cache=cache)  # fmt: skip
    assert result.returncode == 1 and "use it with --test" in result.stderr
    label = sorted((data / "labelsTs").iterdir())[0]
    moved = tmp_path / label.name
    shutil.move(label, moved)
    try:
        result = _segbench("predict", str(run), "--model", "fcn", "--test", "--evaluate", "--out", str(tmp_path / "b"),
                           env_cache=cache)  # fmt: skip
    finally:
        shutil.move(moved, label)
    assert result.returncode == 1
    assert f"but {label.name.removesuffix('.nii.gz')} has none" in result.stderr and "labelsTs" in result.stderr
