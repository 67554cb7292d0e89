"""Rows without jobs (segbench.extra_models): an ensemble of the run's models and external predictions, scored with
the run's metrics and postprocessing rule, stored in RUN_DIR/extra_models/ and shown by every later report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from report_fixtures import CASES, SHAPE, SPACING, add_island, ball, make_run_dir, write_job_results

from segbench import results, rundir
from segbench.data.nifti import read_label
from segbench.errors import ConfigError, DatasetError, RunDirectoryError
from segbench.extra_models import add_ensemble, add_external, find_predictions, load_extra_models
from segbench.metrics import compute_case_metrics
from segbench.probabilities import write_probabilities
from segbench.report import write_report

# Foreground probability on and off each model's predicted ball: a voxel is foreground in the mean only where both
# models predict it ((0.8 + 0.6) / 2 > 0.5, (0.8 + 0.05) / 2 < 0.5): the ensemble is the intersection.
ON = {"unet": 0.8, "fcn": 0.6}
OFF = 0.05


def _save_nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(array.astype(np.uint8), np.diag([*SPACING, 1.0]))
    image.header.set_zooms(SPACING)
    nib.save(image, str(path))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished fcn/unet run whose jobs kept probabilities: fcn one sigmoid channel, unet a two-class softmax."""
    run = make_run_dir(tmp_path)
    write_job_results(run)
    for prediction in sorted((run / "jobs").glob("*/fold_*/predictions/*.nii.gz")):
        model = prediction.parents[2].name
        foreground = np.where(read_label(prediction).array == 1, ON[model], OFF).astype(np.float32)
        channels = foreground[None] if model == "fcn" else np.stack([1 - foreground, foreground])
        write_probabilities(prediction.with_name(prediction.name.replace(".nii.gz", ".npz")), channels)
    return run


def _labels(run: Path, model: str, case_id: str) -> np.ndarray:
    return read_label(run / "predictions" / model / f"{case_id}.nii.gz").array


def test_ensemble_is_the_mean_of_the_members_probabilities_scored_like_a_model(run: Path):
    row = add_ensemble(run, ["fcn", "unet"])
    assert (row.name, row.kind, row.members, row.missing) == ("fcn+unet", "ensemble", ("fcn", "unet"), ())
    metrics = pd.read_csv(rundir.extra_metrics_path(run, "fcn+unet"), dtype={"case_id": str})
    assert sorted(metrics["case_id"]) == sorted(CASES)
    splits = json.loads((run / "splits.json").read_text())
    for case_id in ("la_003", "la_010"):
        expected = (_labels(run, "fcn", case_id) & _labels(run, "unet", case_id)).astype(np.uint8)
        written = read_label(rundir.extra_prediction_path(run, "fcn+unet", case_id))
        np.testing.assert_array_equal(written.array, expected)
        reference = read_label(run.parent / "data" / "labelsTr" / f"{case_id}.nii.gz")
        (want,) = compute_case_metrics(expected, reference.array, reference.spacing, labels=(1,), tolerance_mm=2.0)
        got = metrics[metrics["case_id"] == case_id].iloc[0]
        assert got["dice"] == pytest.approx(want["dice"]) and got["hd95"] == pytest.approx(want["hd95"])
        assert got["fold"] == next(k for k, split in enumerate(splits) if case_id in split["val"])
    stored = json.loads(rundir.extra_model_path(run, "fcn+unet").read_text())
    assert stored["kind"] == "ensemble" and stored["postprocessing"]["cases"] == len(CASES)


def test_ensemble_and_external_rows_in_the_report(run: Path, tmp_path: Path):
    add_ensemble(run, ["fcn", "unet"], name="both")
    external = tmp_path / "crossval_results_folds_0_1_2_3_4"
    for case_id in CASES[2:]:  # two cases missing
        _save_nifti(external / f"{case_id}.nii.gz", ball())
    _save_nifti(external / "postprocessed" / "la_003.nii.gz", np.zeros(SHAPE))  # nnU-Net's other folder: ignored
    (external / "summary.json").write_text("{}")
    row = add_external(run, "nnunet", external)
    assert row.missing == CASES[:2] and len(row.cases) == len(CASES) - 2
    write_report(run)
    text = (run / "report" / "report.md").read_text()
    board = text.split("## Leaderboard")[1].split("\n## ")[0]
    assert "| nnunet (external) (incomplete) | 18 | – |" in board
    assert "both (ensemble) |" in board
    assert "nnunet: external predictions from" in board and "2 case(s) without a prediction: la_003, la_004" in board
    per_fold = text.split("## Per-fold results")[1].split("\n## ")[0]
    assert "| nnunet | 1.000 | 1.000 |" in per_fold and "missing" not in per_fold  # folds 0 and 1 lack one case each
    statistics = text.split("## Statistics")[1].split("\n## ")[0]
    assert "both" in statistics and "nnunet" in statistics  # paired against the best like every model
    postprocessing = text.split("## Postprocessing")[1].split("\n## ")[0]
    assert "| both |" in postprocessing and "| nnunet |" in postprocessing
    summary = pd.read_csv(run / "report" / "summary.csv")
    kinds = dict(zip(summary["model"], summary["kind"], strict=True))
    assert kinds == {"fcn": "trained", "unet": "trained", "both": "ensemble", "nnunet": "external"}
    nnunet = summary[summary["model"] == "nnunet"].iloc[0]
    assert nnunet["cases"] == 18 and pd.isna(nnunet["params"])  # no cost figures
    assert nnunet["dice_mean"] == pytest.approx(1.0)  # the reference itself
    # Stored in the run directory: a later report without --add shows both rows again.
    write_report(run, out_dir=tmp_path / "again")
    assert "nnunet (external)" in (tmp_path / "again" / "report.md").read_text()


def test_an_external_rows_postprocessing_is_decided_on_its_own_cases(run: Path, tmp_path: Path):
    external = tmp_path / "preds"
    for case_id in CASES:
        _save_nifti(external / f"{case_id}.nii.gz", ball())
    for case_id in CASES[:6]:
        add_island(external / f"{case_id}.nii.gz")
    row = add_external(run, "islands", external)
    assert row.decision.applied == ((1,),)
    after = pd.read_csv(rundir.extra_metrics_path(run, "islands", postprocessed=True), dtype={"case_id": str})
    before = pd.read_csv(rundir.extra_metrics_path(run, "islands"), dtype={"case_id": str})
    assert (after["dice"] == 1.0).all() and (before["dice"] < 1.0).sum() == 6


def test_monai_layouts_and_nnunet_channel_suffixes_are_found(tmp_path: Path):
    folder = tmp_path / "monai"
    _save_nifti(folder / "la_003" / "la_003_seg.nii.gz", ball())  # SaveImage(separate_folder=True)
    _save_nifti(folder / "la_004_seg.nii.gz", ball())  # separate_folder=False
    _save_nifti(folder / "la_005_0000" / "la_005_0000_trans.nii.gz", ball())  # an nnU-Net-named input, default postfix
    _save_nifti(folder / "la_0031.nii", ball())  # another case whose id starts with la_003
    _save_nifti(folder / "la_006_extra" / "other.nii.gz", ball())  # not the folder's case: ignored
    found = find_predictions(folder, ["la_003", "la_004", "la_005", "la_0031", "la_006"])
    assert {case: path.relative_to(folder).as_posix() for case, path in found.items()} == {
        "la_003": "la_003/la_003_seg.nii.gz",
        "la_004": "la_004_seg.nii.gz",
        "la_005": "la_005_0000/la_005_0000_trans.nii.gz",
        "la_0031": "la_0031.nii",
    }
    _save_nifti(folder / "la_004.nii.gz", ball())
    with pytest.raises(DatasetError, match="two predictions of case la_004"):
        find_predictions(folder, ["la_004"])


def test_ensemble_refuses_a_member_without_probabilities_naming_the_cases(run: Path):
    for case_id in ("la_003", "la_008"):
        next((run / "jobs" / "unet").glob(f"fold_*/predictions/{case_id}.npz")).unlink()
    with pytest.raises(RunDirectoryError) as error:
        add_ensemble(run, ["fcn", "unet"])
    message = str(error.value)
    assert "unet has no class probabilities for 2 of the run's 20 cases (la_003, la_008)" in message
    assert "--save-probabilities" in message and "segbench run --resume --out" in message
    assert not rundir.extra_models_root(run).exists() or not list(rundir.extra_models_root(run).iterdir())


def test_ensemble_refuses_bad_requests(run: Path):
    with pytest.raises(ConfigError, match="at least two different models"):
        add_ensemble(run, ["unet", "unet"])
    with pytest.raises(ConfigError, match="resnet not in the run"):
        add_ensemble(run, ["unet", "resnet"])
    with pytest.raises(ConfigError, match="is a model of the run"):
        add_ensemble(run, ["fcn", "unet"], name="unet")


def test_external_in_another_geometry_is_refused_and_the_stored_row_survives(run: Path, tmp_path: Path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    for case_id in CASES:
        _save_nifti(good / f"{case_id}.nii.gz", ball())
        _save_nifti(bad / f"{case_id}.nii.gz", np.zeros((8, 8, 8)))
    add_external(run, "ext", good)
    with pytest.raises(DatasetError, match="case la_003: prediction shape"):
        add_external(run, "ext", bad)
    (row,) = load_extra_models(run)
    assert row.source == str(good.resolve()) and len(row.cases) == len(CASES)
    with pytest.raises(DatasetError, match="no file names a case of the run"):
        add_external(run, "none", tmp_path / "bad" / "..")  # tmp_path: folders only, no case file
    with pytest.raises(ConfigError, match="not a folder"):
        add_external(run, "none", tmp_path / "nowhere")


def test_cli_report_add_and_ensemble(run: Path, tmp_path: Path):
    cli = Path(sys.executable).with_name("segbench")
    external = tmp_path / "monai_out"
    for case_id in CASES[1:]:
        _save_nifti(external / case_id / f"{case_id}_seg.nii.gz", ball())
    done = subprocess.run([str(cli), "ensemble", str(run), "--models", "fcn,unet", "--no-report"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ensemble fcn+unet: 20 cases scored" in done.stdout and not (run / "report").exists()
    done = subprocess.run([str(cli), "report", str(run), "--add", f"monai={external}"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 case(s) without a prediction: la_003" in done.stdout
    text = (run / "report" / "report.md").read_text()
    assert "monai (external) (incomplete)" in text and "fcn+unet (ensemble)" in text
    bad = subprocess.run([str(cli), "report", str(run), "--add", "nofolder"], capture_output=True, text=True)
    assert bad.returncode != 0 and "NAME=PRED_DIR" in bad.stderr
    next((run / "jobs" / "fcn").glob("fold_0/predictions/*.npz")).unlink()
    refused = subprocess.run([str(cli), "ensemble", str(run), "--models", "fcn,unet", "--name", "again"],
                             capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 1 and "fcn has no class probabilities for 1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert results.load_metrics(run)["model"].isin(["fcn", "unet"]).all()  # the run's own table is left as it was
