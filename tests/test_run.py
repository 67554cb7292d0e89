"""End-to-end runs on tiny synthetic data: the console script, the run directory contract, statuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from segbench import registry, results, rundir
from segbench.config import RunConfig, TrainConfig
from segbench.rundir import JobKey
from segbench.runner import run_comparison

TINY_TRAIN = ["--iterations", "3", "--patch", "16", "16", "16", "--batch-size", "2", "--num-workers", "0"]


def segbench(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real console entry point."""
    command = [sys.executable, "-m", "segbench", *args]
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=300)


@pytest.mark.slow
def test_two_models_two_folds_through_the_console_script(tiny_task: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = segbench("run", "--data", str(tiny_task), "--models", "fcn,unet", "--folds", "2", *TINY_TRAIN,
                    "--out", str(run_dir), "--quiet", "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Leaderboard" in proc.stdout

    metrics = pd.read_csv(run_dir / "metrics.csv")
    case_ids = sorted(p.name.removesuffix(".nii.gz") for p in (tiny_task / "labelsTr").glob("la_*.nii.gz"))
    for model in ("fcn", "unet"):
        counts = metrics[metrics["model"] == model]["case_id"].value_counts()
        assert sorted(counts.index) == case_ids  # every case predicted ...
        assert (counts == 1).all()  # ... exactly once out of fold
    jobs = pd.read_csv(run_dir / "jobs.csv")
    assert len(jobs) == 4 and set(jobs["status"]) == {"done"}
    assert (jobs["params"] > 0).all() and (jobs["train_voxels_per_s"] > 0).all()
    assert jobs.loc[jobs["model"] == "unet", "params"].iloc[0] == 769_023

    # Predictions come back in the original geometry, with the original affine.
    for case_id in case_ids[:2]:
        reference = nib.load(tiny_task / "labelsTr" / f"{case_id}.nii.gz")
        fold = int(metrics[(metrics["model"] == "unet") & (metrics["case_id"] == case_id)]["fold"].iloc[0])
        prediction = nib.load(run_dir / "jobs" / "unet" / f"fold_{fold}" / "predictions" / f"{case_id}.nii.gz")
        assert prediction.shape == reference.shape
        np.testing.assert_allclose(prediction.affine, reference.affine, atol=1e-5)

    manifest = results.load_manifest(run_dir)
    assert manifest["models"] == ["fcn", "unet"]
    assert manifest["dataset"]["fingerprint"]
    assert manifest["environment"]["torch"] == torch.__version__


def test_resampled_run_writes_predictions_in_the_original_geometry(tiny_task: Path, tmp_path: Path):
    config = RunConfig(
        data=str(tiny_task), models=("fcn",), folds=2, target_spacing=(4.0, 4.0, 4.0),
        train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0),
    )  # fmt: skip
    outcome = run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False)
    assert outcome.all_done, [r.reason for r in outcome.results]
    for path in (tmp_path / "run" / "jobs" / "fcn").glob("fold_*/predictions/*.nii.gz"):
        reference = nib.load(tiny_task / "labelsTr" / path.name)
        prediction = nib.load(path)
        assert prediction.shape == reference.shape
        np.testing.assert_allclose(prediction.affine, reference.affine, atol=1e-5)


class NaNAfterTwoSteps(nn.Module):
    """A real network whose output turns NaN from its third training forward pass on."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        out = self.conv(x)
        return out * float("nan") if self.training and self.calls > 2 else out


@pytest.fixture
def nan_model():
    name = "test_nan_net"
    registry.register_model(name, family="test", divisor=1)(
        lambda *, in_channels, out_channels: NaNAfterTwoSteps(in_channels, out_channels)
    )
    yield name
    registry.unregister_model(name)


@pytest.mark.parametrize("numerics", ["bf16", "fp32"])
@pytest.mark.slow
def test_nan_loss_gives_a_diverged_row_and_the_other_jobs_finish(
    tiny_task: Path, tmp_path: Path, nan_model: str, numerics: str
):
    config = RunConfig(
        data=str(tiny_task), models=("fcn", nan_model), folds=2,
        train=TrainConfig(iterations=4, patch_size=(16, 16, 16), num_workers=0, checkpoint_every=1, log_every=1,
                          precision=numerics),
    )  # fmt: skip
    outcome = run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False)
    assert not outcome.all_done
    jobs = results.load_jobs(tmp_path / "run")
    assert set(jobs[jobs["model"] == "fcn"]["status"]) == {"done"}
    diverged = jobs[jobs["model"] == nan_model]
    assert set(diverged["status"]) == {"diverged"}
    assert diverged["reason"].str.contains("iteration 3").all()
    hint = diverged["reason"].str.contains("`--precision fp32`", regex=False)  # tells numerics from the recipe
    assert hint.all() if numerics == "bf16" else not hint.any()
    # The last good checkpoint (iteration 2) is kept.
    from segbench.checkpoints import load_latest_checkpoint

    checkpoint = load_latest_checkpoint(rundir.job_dir(tmp_path / "run", JobKey(nan_model, 0)))
    assert checkpoint["iteration"] == 2


BROKEN_MODULE = """
import torch
from torch import nn
from segbench import registry

class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        raise RuntimeError("this model is broken on purpose")

registry.register_model("broken", family="test", divisor=1)(lambda *, in_channels, out_channels: Broken())
"""


@pytest.mark.slow
def test_exit_code_is_non_zero_when_a_job_fails(tiny_task: Path, tmp_path: Path):
    # A model whose forward raises, registered at run time by the user's own module (not a plugin); job processes
    # import that module themselves.
    (tmp_path / "my_broken_models.py").write_text(BROKEN_MODULE)
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
import my_broken_models
from segbench.cli import main
sys.argv = ["segbench", "run", "--data", {str(tiny_task)!r}, "--models", "fcn,broken", "--folds", "2",
            {", ".join(repr(a) for a in TINY_TRAIN)}, "--out", {str(tmp_path / "run")!r}, "--quiet", "--no-report"]
main()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "broken fold 0: failed" in proc.stderr
    jobs = results.load_jobs(tmp_path / "run")
    assert set(jobs[jobs["model"] == "fcn"]["status"]) == {"done"}
    assert (tmp_path / "run" / "jobs" / "broken" / "fold_0" / "error.txt").read_text().count("broken on purpose")


@pytest.mark.slow
def test_a_model_registered_in_the_main_script_is_refused_before_any_job_unless_in_process(
    tiny_task: Path, tmp_path: Path
):
    script = (
        BROKEN_MODULE
        + f"""
import sys
from segbench.cli import main
sys.argv = ["segbench", "run", "--data", {str(tiny_task)!r}, "--models", "broken", "--folds", "2",
            {", ".join(repr(a) for a in TINY_TRAIN)}, "--out", {str(tmp_path / "run")!r}, "--quiet", "--no-report"]
main()
"""
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "registered in the script being run" in proc.stderr and "--in-process" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "jobs").exists()
    in_process = script.replace("main()", "sys.argv.append('--in-process'); main()")
    proc = subprocess.run([sys.executable, "-c", in_process], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "broken fold 0: failed" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_fewer_cases_than_folds_is_one_clear_error(tiny_task: Path, tmp_path: Path):
    proc = segbench("run", "--data", str(tiny_task), "--folds", "7", *TINY_TRAIN, "--out", str(tmp_path / "r"))
    assert proc.returncode == 1
    assert "fold" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "jobs").exists()


@pytest.mark.slow
def test_patch_not_divisible_by_a_model_divisor_is_refused(tiny_task: Path, tmp_path: Path):
    proc = segbench("run", "--data", str(tiny_task), "--models", "unet", "--folds", "2", "--patch", "18", "16", "16",
                    "--out", str(tmp_path / "r"))  # fmt: skip
    assert proc.returncode == 1
    assert "divisible by 4" in proc.stderr and "Traceback" not in proc.stderr
