"""Out-of-fold class probabilities (segbench.probabilities, `segbench run --save-probabilities`): the file format,
resume treating them like the predictions, and a real run that keeps them for `segbench ensemble`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from report_fixtures import make_run_dir, write_job_results

from segbench import results, rundir
from segbench.case_predictions import PredictionLedger
from segbench.config import InferenceConfig, RunConfig, TrainConfig
from segbench.data.nifti import read_label
from segbench.probabilities import (
    class_probabilities,
    foreground_classes,
    missing_probabilities,
    read_probabilities,
    write_probabilities,
)
from segbench.rundir import JobKey
from segbench.runner import plan_jobs, plan_resume, run_comparison


def test_files_are_float16_and_read_back_background_first(tmp_path: Path):
    softmax = class_probabilities(torch.tensor([[[[2.0, -1.0]]], [[[0.0, 3.0]]]]))  # (2, 1, 1, 2)
    np.testing.assert_allclose(softmax.sum(0).numpy(), 1.0, rtol=1e-6)
    write_probabilities(tmp_path / "a.npz", softmax.numpy())
    with np.load(tmp_path / "a.npz") as data:
        assert data["probabilities"].dtype == np.float16
    np.testing.assert_allclose(read_probabilities(tmp_path / "a.npz"), softmax.numpy(), atol=1e-3)
    sigmoid = class_probabilities(torch.tensor([[[[0.5, -2.0]]]]))  # one channel: sigmoid
    write_probabilities(tmp_path / "b.npz", sigmoid.numpy())
    both = read_probabilities(tmp_path / "b.npz")
    assert both.shape == (2, 1, 1, 2) and both.dtype == np.float32
    np.testing.assert_allclose(both[1], sigmoid.numpy()[0], atol=1e-3)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(foreground_classes(both, (1,)), [[[1, 0]]])
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="c.npz is not a probabilities file"):
        read_probabilities(tmp_path / "c.npz")


def test_the_ledger_treats_probabilities_like_predictions(tmp_path: Path):
    key = JobKey("unet", 0)
    ledger = PredictionLedger(tmp_path, key, "weights-a", probabilities=True)
    ledger.path("la_003").write_bytes(b"x")
    assert not ledger.kept("la_003")  # a prediction without its probabilities is predicted again
    write_probabilities(ledger.probabilities_path("la_003"), np.zeros((2, 1, 1, 1)))
    assert PredictionLedger(tmp_path, key, "weights-a", probabilities=True).kept("la_003")
    assert PredictionLedger(tmp_path, key, "weights-a").kept("la_003")
    PredictionLedger(tmp_path, key, "weights-b", probabilities=True)  # other weights: both files go
    assert not ledger.path("la_003").exists() and not ledger.probabilities_path("la_003").exists()


def test_resume_with_save_probabilities_reruns_done_jobs_that_lack_them(tmp_path: Path):
    run = make_run_dir(tmp_path)
    write_job_results(run)
    assert plan_jobs(run, ["fcn", "unet"], 5)[0] == []
    todo, _ = plan_jobs(run, ["fcn", "unet"], 5, probabilities=True)
    assert len(todo) == 10
    for case in results.scan_results(run).results[0].metrics:  # fcn fold 0 gets its files
        write_probabilities(rundir.probabilities_path(run, JobKey("fcn", 0), case["case_id"]), np.zeros((1, 1, 1, 1)))
    todo, _ = plan_jobs(run, ["fcn", "unet"], 5, probabilities=True)
    assert JobKey("fcn", 0) not in todo and len(todo) == 9
    assert missing_probabilities(run, JobKey("fcn", 1)) == sorted(c for c in results.load_metrics(run).query(
        "model == 'fcn' and fold == 1")["case_id"])  # fmt: skip
    plan = plan_resume(run, ["fcn", "unet"], 5, probabilities=True)
    assert ("fcn", 0, "done") in plan.kept and ("fcn", 1, "done without probabilities") in plan.restarted


@pytest.mark.slow
def test_a_run_keeps_probabilities_that_an_ensemble_averages(tiny_task: Path, tmp_path: Path):
    from segbench.extra_models import add_ensemble

    config = RunConfig(data=str(tiny_task), models=("fcn", "unet"), folds=2,
                       train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0))  # fmt: skip
    run_dir = tmp_path / "run"
    assert run_comparison(config, run_dir=run_dir, progress=False, report=False).all_done
    assert not list(run_dir.glob("jobs/*/fold_*/predictions/*.npz"))
    with pytest.raises(Exception, match="run with --save-probabilities"):
        add_ensemble(run_dir, ["fcn", "unet"])
    keep = dataclasses.replace(config, inference=InferenceConfig(save_probabilities=True))
    before = results.load_metrics(run_dir)
    outcome = run_comparison(keep, run_dir=run_dir, resume=True, progress=False, report=False)
    assert outcome.all_done
    after = results.load_metrics(run_dir)
    np.testing.assert_allclose(after["dice"], before["dice"])  # the same weights: the same predictions
    for prediction in sorted(run_dir.glob("jobs/*/fold_*/predictions/*.nii.gz")):
        labels = read_label(prediction).array
        probabilities = read_probabilities(prediction.with_name(prediction.name.replace(".nii.gz", ".npz")))
        assert probabilities.shape == (2, *labels.shape)  # one sigmoid channel, read back as (1 - p, p)
        disagree = foreground_classes(probabilities, (1,)) != labels
        # Only where float16 rounded p to 0.5 itself (2 training iterations leave many voxels near 0.5).
        np.testing.assert_allclose(probabilities[1][disagree], 0.5, atol=5e-4)
    row = add_ensemble(run_dir, ["fcn", "unet"])
    assert len(row.cases) == 6 and row.missing == ()
