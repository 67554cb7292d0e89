"""Untrusted checkpoints never run code (dataset paths: test_dataset.py; HTML escaping: test_report.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from segbench.checkpoints import UnsafeCheckpointError, load_checkpoint_file, load_latest_checkpoint
from segbench.rundir import CHECKPOINT_LATEST as LATEST


class _CreatesAFile:
    """Unpickling this object calls ``open(target, "w")``: the file appearing proves that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_malicious_checkpoint(path: Path, target: Path) -> None:
    buffer = io.BytesIO()
    torch.save({"iteration": 3, "model": {}, "payload": _CreatesAFile(target)}, buffer)
    path.write_bytes(buffer.getvalue())


def test_a_checkpoint_carrying_pickled_code_is_refused_and_the_code_never_runs(tmp_path):
    target = tmp_path / "pwned"
    checkpoint = tmp_path / "evil.pt"
    write_malicious_checkpoint(checkpoint, target)
    # The crafted file really is dangerous: an unsafe load creates the file.
    torch.load(checkpoint, weights_only=False)
    assert target.exists()
    target.unlink()

    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        load_checkpoint_file(checkpoint)
    assert not target.exists()


def test_resume_refuses_a_malicious_checkpoint_in_a_job_folder(tmp_path):
    target = tmp_path / "pwned"
    write_malicious_checkpoint(tmp_path / LATEST, target)
    with pytest.raises(UnsafeCheckpointError, match="could run code"):
        load_latest_checkpoint(tmp_path)  # never silently skipped to an older checkpoint or a fresh start
    assert not target.exists()
    assert (tmp_path / LATEST).exists()  # left in place for the user to inspect


def test_a_run_with_a_planted_checkpoint_marks_the_job_failed_without_running_it(tiny_task, tmp_path):
    from segbench import rundir
    from segbench.config import RunConfig, TrainConfig
    from segbench.rundir import JobKey
    from segbench.runner import run_comparison

    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2,
                       train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0))  # fmt: skip
    run_dir = tmp_path / "run"
    run_comparison(config, run_dir=run_dir, progress=False, report=False)
    folder = rundir.job_dir(run_dir, JobKey("fcn", 1))
    (folder / rundir.RESULT_FILE).unlink()
    target = tmp_path / "pwned"
    write_malicious_checkpoint(folder / LATEST, target)
    outcome = run_comparison(config, run_dir=run_dir, resume=True, progress=False, report=False)
    failed = [r for r in outcome.results if r.fold == 1][0]
    assert failed.status == "failed" and "could run code" in failed.reason
    assert not target.exists()
    assert os.path.exists(folder / LATEST)
