"""``segbench run --recipe nnunet`` end to end on a tiny nnU-Net raw dataset (slow tier): the plan made on the fly,
nnU-Net's networks with deep supervision beside a model without it, the recipe and its deviations in the manifest,
jobs.csv and the report, and two names for one network giving identical per-case metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from msd_factory import write_nnunet

pytest.importorskip("dynamic_network_architectures", reason="the nnunet recipe's networks need segbench[nnunet]")
pytest.importorskip("batchgeneratorsv2", reason="the nnunet recipe's augmentation needs segbench[nnunet]")

pytestmark = pytest.mark.slow
SEGBENCH = Path(sys.executable).parent / "segbench"
MODELS = "nnunet_plain,nnunet_resenc_m,nnunet_resenc_l,unet"


def _env(cache: Path) -> dict[str, str]:
    # A bare environment (segbench found next to the interpreter, not on PATH); PYTHONPATH kept for worktrees.
    env = {"SEGBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return env | ({"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})


@pytest.fixture(scope="module")
def nnunet_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("raw")
    data = write_nnunet(root / "Dataset906_Tiny", cases=("t_001", "t_002", "t_003", "t_004"), test_cases=(),
                        shape=(24, 24, 20))  # fmt: skip
    out = root / "run"
    env = _env(root / "cache")
    result = subprocess.run(
        [str(SEGBENCH), "run", "--recipe", "nnunet", "--data", str(data), "--models", MODELS, "--iterations", "3",
         "--folds", "2", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    return out, result


def test_the_run_ends_with_every_job_done_and_a_plan_made_on_the_fly(nnunet_run):
    out, result = nnunet_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "planning" in result.stderr and "nnU-Net's default planner" in result.stderr
    assert "no cost estimate" not in result.stderr  # the estimate measures softmax outputs, as the jobs train them
    plans = json.loads((out / "plans.json").read_text())
    assert plans["plans_name"] == "nnUNetPlans"
    jobs = pd.read_csv(out / "jobs.csv")
    assert set(jobs["status"]) == {"done"} and len(jobs) == 8


def test_recipe_budget_and_deep_supervision_are_recorded_per_job(nnunet_run):
    out, _ = nnunet_run
    jobs = pd.read_csv(out / "jobs.csv").set_index(["model", "fold"])
    assert set(jobs["recipe"]) == {"nnunet"} and set(jobs["optimizer"]) == {"sgd"} and set(jobs["lr"]) == {0.01}
    assert set(jobs["epochs"]) == {3 / 250}
    deep = jobs["deep_supervision"].groupby(level="model").first().to_dict()
    assert deep == {"nnunet_plain": True, "nnunet_resenc_m": True, "nnunet_resenc_l": True, "unet": False}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "nnunet"
    assert manifest["recipe"]["deviations"] == ["train.iterations: 3 is not a whole number of epochs of 250"]


def test_the_report_names_recipe_budget_deviation_and_deep_supervision(nnunet_run):
    out, _ = nnunet_run
    report = (out / "report" / "report.md").read_text()
    assert "Recipe: nnunet (nnU-Net v2.8.1 nnUNetTrainer" in report
    assert "budget 0.012 epochs (3 iterations) per job" in report
    assert "deviations from the recipe: train.iterations: 3 is not a whole number of epochs of 250" in report
    assert "nnunet_plain yes" in report and "unet no (no deep-supervision outputs)" in report


def test_two_names_for_one_network_give_identical_per_case_metrics(nnunet_run):
    # nnU-Net's ResEnc M and L presets differ only in the GPU memory they plan for: at one plan, one network.
    out, _ = nnunet_run
    metrics = pd.read_csv(out / "metrics.csv", dtype={"case_id": str})
    numeric = ["dice", "hd95", "nsd"]
    m = metrics[metrics["model"] == "nnunet_resenc_m"].set_index(["fold", "case_id", "label_name"])[numeric]
    l_ = metrics[metrics["model"] == "nnunet_resenc_l"].set_index(["fold", "case_id", "label_name"])[numeric]
    assert len(m) == 4
    pd.testing.assert_frame_equal(m.sort_index(), l_.sort_index())


def test_predict_with_one_fold_reproduces_its_out_of_fold_predictions_through_the_plan(nnunet_run, tmp_path):
    # The plan's crop, transposition and resampling taken back by `segbench predict` as the job took them back.
    import nibabel as nib
    import numpy as np

    out, _ = nnunet_run
    data = Path(json.loads((out / "manifest.json").read_text())["dataset"]["path"])
    val = json.loads((out / "splits.json").read_text())[0]["val"]
    env = _env(out.parent / "cache")
    result = subprocess.run(
        [str(SEGBENCH), "predict", str(out), "--model", "nnunet_plain", str(data / "imagesTr"), "--folds", "0",
         "--out", str(tmp_path), "--save-probabilities", "--no-postprocessing"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for case_id in val:
        oof = out / "jobs" / "nnunet_plain" / "fold_0" / "predictions" / f"{case_id}.nii.gz"
        predicted = np.asarray(nib.load(str(tmp_path / f"{case_id}.nii.gz")).dataobj)
        np.testing.assert_array_equal(predicted, np.asarray(nib.load(str(oof)).dataobj))
        probabilities = np.load(tmp_path / f"{case_id}.npz")["probabilities"]
        assert probabilities.shape == (2, *predicted.shape)  # softmax: background and the label
        np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
