"""A comparison survives kills, faults and bad input without losing a finished result.

Faults are real: SIGKILL of subprocesses (at chosen points, by monkeypatching a function to kill its own process),
truncated files, a patched step raising CUDA OOM, a patched write raising ENOSPC.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from segbench import job as job_module
from segbench import results, rundir
from segbench.checkpoints import load_latest_checkpoint, save_checkpoint
from segbench.config import RunConfig, TrainConfig
from segbench.errors import RunDirectoryError
from segbench.locking import RunLock
from segbench.rundir import CHECKPOINT_LATEST as LATEST
from segbench.rundir import CHECKPOINT_PREVIOUS as PREVIOUS
from segbench.rundir import JobKey
from segbench.runner import run_comparison

TRAIN = TrainConfig(iterations=6, patch_size=(16, 16, 16), num_workers=0, checkpoint_every=2, log_every=1)


def tiny_config(data: Path, **changes) -> RunConfig:
    fields = {"data": str(data), "models": ("fcn", "unet"), "folds": 2, "train": TRAIN, **changes}
    return RunConfig(**fields)


def run(config: RunConfig, run_dir: Path, **kwargs):
    return run_comparison(config, run_dir=run_dir, progress=False, report=False, **kwargs)


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "job.lock"}  # fmt: skip


def run_script(body: str, *, env_cache: Path) -> subprocess.CompletedProcess:
    """Run python code in a fresh process (so SIGKILL hits it, not pytest)."""
    env = {**os.environ, "SEGBENCH_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=300, env=env)


KILL_AFTER_SAVES = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from segbench import job
from segbench.config import RunConfig, TrainConfig
from segbench.runner import run_comparison
calls = {{"n": 0}}
real_save = job.save_checkpoint
def save_then_maybe_die(folder, payload):
    calls["n"] += 1
    {before}
    real_save(folder, payload)
    {after}
job.save_checkpoint = save_then_maybe_die
train = TrainConfig(iterations=6, patch_size=(16, 16, 16), num_workers=0, checkpoint_every=2, log_every=1)
config = RunConfig(data={data!r}, models={models!r}, folds=2, train=train)
run_comparison(config, run_dir={run_dir!r}, progress=False, report=False)
"""


@pytest.mark.slow
def test_sigkill_after_some_jobs_then_resume_keeps_finished_files_byte_identical(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    # Die on the first checkpoint of the third job: jobs 1 and 2 (fcn fold 0 and 1) are finished by then.
    body = KILL_AFTER_SAVES.format(
        data=str(tiny_task), models=("fcn", "unet"), run_dir=str(run_dir),
        before="if calls['n'] == 9: os.kill(os.getpid(), signal.SIGKILL)", after="",
    )  # fmt: skip
    proc = run_script(body, env_cache=Path(os.environ["SEGBENCH_CACHE"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    finished = {r.model + str(r.fold) for r in results.scan_results(run_dir).results}
    assert finished == {"fcn0", "fcn1"}
    before = {name: file_digests(rundir.job_dir(run_dir, JobKey("fcn", fold))) for name, fold in (("f0", 0), ("f1", 1))}

    outcome = run(tiny_config(tiny_task), run_dir, resume=True)
    assert outcome.all_done
    after = {name: file_digests(rundir.job_dir(run_dir, JobKey("fcn", fold))) for name, fold in (("f0", 0), ("f1", 1))}
    assert after == before
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert not metrics.duplicated(["model", "fold", "case_id", "label"]).any()
    assert len(metrics) == 2 * 6  # 2 models × 6 cases, each exactly once
    assert len(pd.read_csv(run_dir / "jobs.csv")) == 4


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write_falls_back_to_the_previous_one(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    # Second save of the first job: rotation done, new latest half-written (temp file), then SIGKILL.
    body = KILL_AFTER_SAVES.format(
        data=str(tiny_task), models=("fcn",), run_dir=str(run_dir),
        before="""if calls["n"] == 2:
        import os as _os, signal as _signal
        from segbench.rundir import CHECKPOINT_LATEST as LATEST, CHECKPOINT_PREVIOUS as PREVIOUS
        _os.replace(os.path.join(folder, LATEST), os.path.join(folder, PREVIOUS))
        open(os.path.join(folder, "." + LATEST + ".partial.tmp"), "wb").write(b"PK\\x03\\x04 half a zip")
        _os.kill(_os.getpid(), _signal.SIGKILL)""",
        after="",
    )  # fmt: skip
    proc = run_script(body, env_cache=Path(os.environ["SEGBENCH_CACHE"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = rundir.job_dir(run_dir, JobKey("fcn", 0))
    assert not (folder / LATEST).exists() and (folder / PREVIOUS).exists()
    assert load_latest_checkpoint(folder)["iteration"] == 2

    outcome = run(tiny_config(tiny_task, models=("fcn",)), run_dir, resume=True)
    assert outcome.all_done
    curve = pd.read_csv(folder / rundir.LEARNING_CURVE_FILE)
    assert curve["iteration"].tolist() == [1, 2, 3, 4, 5, 6]  # continued from 2, no restart, no duplicates


@pytest.mark.slow
def test_sigkill_mid_training_resumes_to_the_same_result_as_an_uninterrupted_run(tiny_task, tmp_path):
    reference = run(tiny_config(tiny_task, models=("unet",), folds=2), tmp_path / "reference")
    assert reference.all_done

    run_dir = tmp_path / "killed"
    # Checkpoint at iteration 4 of the first job written, then killed while training iteration 5.
    body = KILL_AFTER_SAVES.format(
        data=str(tiny_task), models=("unet",), run_dir=str(run_dir),
        before="", after="if calls['n'] == 2: os.kill(os.getpid(), signal.SIGKILL)",
    )  # fmt: skip
    proc = run_script(body, env_cache=Path(os.environ["SEGBENCH_CACHE"]))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    folder = rundir.job_dir(run_dir, JobKey("unet", 0))
    assert load_latest_checkpoint(folder)["iteration"] == 4
    assert not (folder / rundir.RESULT_FILE).exists()

    resumed = run(tiny_config(tiny_task, models=("unet",), folds=2), run_dir, resume=True)
    assert resumed.all_done
    curve = pd.read_csv(folder / rundir.LEARNING_CURVE_FILE)
    assert curve["iteration"].tolist() == list(range(1, 7))
    expected_curve = pd.read_csv(rundir.job_dir(tmp_path / "reference", JobKey("unet", 0)) / rundir.LEARNING_CURVE_FILE)
    pd.testing.assert_series_equal(curve["loss"], expected_curve["loss"], rtol=1e-4)
    got = pd.read_csv(run_dir / "metrics.csv").sort_values(["fold", "case_id"]).reset_index(drop=True)
    want = pd.read_csv(tmp_path / "reference" / "metrics.csv").sort_values(["fold", "case_id"]).reset_index(drop=True)
    pd.testing.assert_series_equal(got["dice"], want["dice"], atol=1e-3)


def test_truncated_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    save_checkpoint(tmp_path, {"iteration": 2, "weights": torch.ones(3)})
    save_checkpoint(tmp_path, {"iteration": 4, "weights": torch.ones(3)})
    latest = tmp_path / LATEST
    latest.write_bytes(latest.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        payload = load_latest_checkpoint(tmp_path)
    assert payload["iteration"] == 2
    assert "truncated" in caplog.text and LATEST in caplog.text
    # The bad file leaves the rotation so the next save cannot push it over the good one.
    save_checkpoint(tmp_path, {"iteration": 6, "weights": torch.ones(3)})
    assert load_latest_checkpoint(tmp_path)["iteration"] == 6


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": replace(TRAIN, iterations=1, lr=0.01)}, "config train.lr: 0.003 -> 0.01"),
        ({"models": ("fcn",)}, "models: fcn, unet -> fcn"),
    ],
)
@pytest.mark.slow
def test_resume_with_a_changed_config_or_model_list_is_refused(tiny_task, tmp_path, change, expected):
    run_dir = tmp_path / "run"
    run(
        tiny_config(tiny_task, models=("fcn", "unet"), train=replace(TRAIN, iterations=1)),
        run_dir,
    )
    base = tiny_config(tiny_task, train=replace(TRAIN, iterations=1))
    changed = RunConfig(**{**base.__dict__, **change})
    if "train" in change:
        changed = RunConfig(
            **{**base.__dict__, "train": TrainConfig(**{**TRAIN.__dict__, "iterations": 1, "lr": 0.01})}
        )
    with pytest.raises(RunDirectoryError, match="cannot resume") as info:
        run(changed, run_dir, resume=True)
    assert expected in str(info.value)


def test_resume_with_a_changed_dataset_is_refused(tiny_task, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_task, data)
    config = tiny_config(data, models=("fcn",), train=replace(TRAIN, iterations=1))
    run(config, tmp_path / "run")
    label = next((data / "labelsTr").glob("la_*.nii.gz"))
    import nibabel as nib

    img = nib.load(label)
    array = img.get_fdata().astype("uint8")
    array[0, 0, 0] = 1 - array[0, 0, 0]
    nib.save(nib.Nifti1Image(array, img.affine, img.header), label)
    with pytest.raises(RunDirectoryError, match="dataset .* changed"):
        run(config, tmp_path / "run", resume=True)


def test_a_new_run_into_an_existing_run_directory_is_refused(tiny_task, tmp_path):
    config = tiny_config(tiny_task, models=("fcn",), train=replace(TRAIN, iterations=1))
    run(config, tmp_path / "run")
    with pytest.raises(RunDirectoryError, match="--resume"):
        run(config, tmp_path / "run")


def test_cuda_oom_raising_model_and_disk_full_get_their_statuses(tiny_task, tmp_path, monkeypatch):
    from segbench import registry

    real_build = registry.build_model

    def patched_build(name, **kwargs):
        model = real_build(name, **kwargs)
        if name == "unet":

            def out_of_memory(*args, **kw):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

            model.forward = out_of_memory
        return model

    monkeypatch.setattr(job_module, "build_model", patched_build)
    real_write = results.atomic_write_json

    def disk_full_for_fcn_fold_1(path, obj):
        if Path(path).name == rundir.RESULT_FILE and Path(path).parent.name == "fold_1" and obj["model"] == "fcn":
            if obj["status"] == "done":
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, obj)

    monkeypatch.setattr(results, "atomic_write_json", disk_full_for_fcn_fold_1)
    outcome = run(tiny_config(tiny_task), tmp_path / "run")
    assert not outcome.all_done
    jobs = results.load_jobs(tmp_path / "run").set_index(["model", "fold"])
    assert jobs.loc[("fcn", 0), "status"] == "done"
    assert jobs.loc[("fcn", 1), "status"] == "failed"
    assert "No space left on device" in jobs.loc[("fcn", 1), "reason"]
    assert set(jobs.loc["unet", "status"]) == {"oom"}
    assert "batch size 2" in jobs.loc[("unet", 0), "reason"]


@pytest.mark.slow
def test_sigterm_marks_the_running_job_killed_and_resume_finishes_it(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    body = KILL_AFTER_SAVES.format(
        data=str(tiny_task), models=("fcn",), run_dir=str(run_dir),
        before="", after="if calls['n'] == 1: raise KeyboardInterrupt",
    )  # fmt: skip
    proc = run_script(body, env_cache=Path(os.environ["SEGBENCH_CACHE"]))
    assert proc.returncode != 0
    result = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE)
    assert result.status == "killed"
    outcome = run(tiny_config(tiny_task, models=("fcn",)), run_dir, resume=True)
    assert outcome.all_done


def test_job_timeout_gives_a_timeout_status(tiny_task, tmp_path):
    outcome = run(tiny_config(tiny_task, models=("fcn",), job_timeout_s=1e-6), tmp_path / "run")
    assert {r.status for r in outcome.results} == {"timeout"}
    assert "time limit" in outcome.results[0].reason


@pytest.mark.slow
def test_two_concurrent_runs_on_one_directory_the_second_refuses(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):  # held by this (live) process, as a running `segbench run` would
        proc = subprocess.run(
            [sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--folds", "2", "--out", str(run_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert proc.returncode == 1
    assert "in use by segbench run" in proc.stderr and f'pid": {os.getpid()}' in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_truncated_result_json_is_reported_and_the_job_redone_on_resume(tiny_task, tmp_path, caplog):
    run_dir = tmp_path / "run"
    config = tiny_config(tiny_task, models=("fcn",))
    run(config, run_dir)
    path = rundir.job_dir(run_dir, JobKey("fcn", 1)) / rundir.RESULT_FILE
    path.write_text(path.read_text()[:50])
    (run_dir / "jobs" / "fcn" / "stray.txt").write_text("not a job")
    with caplog.at_level(logging.WARNING):
        scan = results.rebuild_tables(run_dir)
    assert any("fcn fold_1" in problem and "truncated" in problem for problem in scan.problems)
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 3  # fold 0 still there
    from segbench.report import write_report

    assert write_report(run_dir).exists()  # the report still works for the rest

    outcome = run(config, run_dir, resume=True)
    assert outcome.all_done
    assert json.loads(path.read_text())["status"] == "done"
    assert len(pd.read_csv(run_dir / "metrics.csv")) == 6


@pytest.mark.slow
def test_unwritable_output_folder_is_one_sentence_before_any_work(tiny_task, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--folds", "2",
                           "--out", str(blocker / "run")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert "cannot write to the output folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bad_dataset_is_refused_before_any_job(tmp_path):
    import shutil

    from segbench.data.synth import make_synthetic_task

    data = make_synthetic_task(tmp_path / "data", cases=4, test_cases=0, seed=1, shape=(16, 16, 16))
    victim = next((data / "imagesTr").glob("la_*.nii.gz"))
    victim.write_bytes(victim.read_bytes()[:-200])
    del shutil
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "segbench", "run", "--data", str(data), "--folds", "2",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert victim.name in proc.stderr and "failed preflight" in proc.stderr
    assert not (tmp_path / "run" / "jobs").exists()
    assert time.time() - start < 120


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_records_killed_and_stops(tiny_task, tmp_path):
    """`kill`/Slurm signal every process of the group, DataLoader workers included."""
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--models", "fcn,unet",
               "--folds", "2", "--iterations", "400", "--patch", "16", "16", "16", "--num-workers", "1",
               "--out", str(run_dir), "--quiet", "--no-report"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.LEARNING_CURVE_FILE
    deadline = time.time() + 120
    while not log.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert log.exists(), proc.communicate()[1]
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr
    result = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE)
    assert result.status == "killed"
    assert not rundir.job_dir(run_dir, JobKey("fcn", 1)).exists()  # no further job was started


@pytest.mark.slow
def test_resume_needs_only_the_run_directory_and_may_change_operational_flags(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    first = subprocess.run([sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--models", "fcn",
                            "--folds", "2", "--iterations", "2", "--patch", "16", "16", "16", "--num-workers", "0",
                            "--out", str(run_dir), "--quiet", "--no-report"],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    (rundir.job_dir(run_dir, JobKey("fcn", 1)) / rundir.RESULT_FILE).unlink()
    resumed = subprocess.run([sys.executable, "-m", "segbench", "run", "--resume", "--out", str(run_dir),
                              "--job-timeout", "600", "--quiet", "--no-report"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    manifest = results.load_manifest(run_dir)
    assert manifest["config"]["job_timeout_s"] == 600 and manifest["config"]["train"]["iterations"] == 2
    assert len(manifest["resumes"]) == 1
    refused = subprocess.run([sys.executable, "-m", "segbench", "run", "--resume", "--out", str(run_dir),
                              "--iterations", "5", "--quiet"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused.returncode == 1 and "train.iterations: 2 -> 5" in refused.stderr


def test_numeric_looking_case_ids_stay_text_in_the_tables(tmp_path):
    row = {"model": "unet", "fold": 0, "case_id": "001", "label": 1, "label_name": "1", "dice": 0.5,
           "hd": float("inf"), "miss": True}  # fmt: skip
    results.write_job_result(tmp_path, results.JobResult("unet", 0, "done", "", {"params": 5}, [row]))
    results.rebuild_tables(tmp_path)
    metrics = results.load_metrics(tmp_path)
    assert metrics["case_id"].tolist() == ["001"] and metrics["label_name"].tolist() == ["1"]
    assert metrics["hd"].tolist() == [float("inf")]


STOP_MID_WINDOW = """
import os, signal
import torch
torch.set_num_threads(1)
from segbench import callbacks, stop
from segbench.config import RunConfig, TrainConfig
from segbench.runner import run_comparison
stop.install_interrupt_handlers()  # what `segbench run` installs
real_log = callbacks.CurveLogger.__call__
def log_then_maybe_signal(self, loop):
    real_log(self, loop)
    if loop.iteration == 7 and not loop.finished:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of the step's callbacks
callbacks.CurveLogger.__call__ = log_then_maybe_signal
train = TrainConfig(iterations=12, patch_size=(16, 16, 16), num_workers=1, checkpoint_every=4, log_every=2)
config = RunConfig(data={data!r}, models=("fcn",), folds=2, train=train)
run_comparison(config, run_dir={run_dir!r}, progress=False, report=False)
"""


@pytest.mark.slow
def test_sigterm_mid_training_checkpoints_that_step_and_resume_gives_the_uninterrupted_curve(tiny_task, tmp_path):
    """No finished step is lost: the stop waits for the step boundary, saves, then records `killed`."""
    train = TrainConfig(iterations=12, patch_size=(16, 16, 16), num_workers=1, checkpoint_every=4, log_every=2)
    config = tiny_config(tiny_task, models=("fcn",), train=train)
    run_dir = tmp_path / "stopped"
    body = STOP_MID_WINDOW.format(data=str(tiny_task), run_dir=str(run_dir))
    proc = run_script(body, env_cache=Path(os.environ["SEGBENCH_CACHE"]))
    assert proc.returncode != 0 and "checkpoint saved at iteration 7" in proc.stderr, proc.stderr[-3000:]
    folder = rundir.job_dir(run_dir, JobKey("fcn", 0))
    assert load_latest_checkpoint(folder)["iteration"] == 7  # not 4: the periodic checkpoint before the signal
    assert results.read_job_result(folder / rundir.RESULT_FILE).status == "killed"
    assert not rundir.job_dir(run_dir, JobKey("fcn", 1)).exists()  # no further job started

    assert run(config, run_dir, resume=True).all_done
    assert run(config, tmp_path / "reference").all_done
    for fold in (0, 1):
        got, want = (
            pd.read_csv(rundir.learning_curve_path(d, JobKey("fcn", fold))) for d in (run_dir, tmp_path / "reference")
        )
        # Same rows, same losses: the row at 8 averages iterations 7 and 8 across the stop (the window is saved).
        pd.testing.assert_frame_equal(got[["iteration", "loss", "lr"]], want[["iteration", "loss", "lr"]])


HOLDER_SCRIPT = """
import ctypes, os, signal, sys, time
from segbench.locking import RunLock

lock = RunLock(sys.argv[1], name="job.lock", what="job").acquire()  # held until the process dies
# What a data-loader worker is: a fork of the job process, outliving it for a while. libc's fork() runs none of
# Python's at-fork handlers: the child that was SIGKILLed-around before it was ever scheduled, made deterministic.
fork = os.fork if sys.argv[2] == "os.fork" else ctypes.CDLL(None).fork
if fork() == 0:
    time.sleep(30)
    os._exit(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer
"""


@pytest.mark.parametrize("fork", ["os.fork", "libc fork (no at-fork handlers)"])
def test_a_killed_lock_holder_frees_its_lock_at_once_although_its_forked_child_lives_on(tmp_path: Path, fork: str):
    """The driver records a SIGKILLed job's status only if the job lock is free; a loader worker used to keep it.

    A record lock belongs to the process, so the child never holds it, whether or not it has run anything yet.
    """
    from segbench.executors import job_lock_held

    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path), fork], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert holder.wait(timeout=30) == -signal.SIGKILL
        assert not job_lock_held(tmp_path)  # the forked child still sleeps, and holds no lock
        with RunLock(tmp_path, name="job.lock", what="the driver"):
            pass
    finally:
        os.killpg(holder.pid, signal.SIGKILL)


def test_a_lock_is_refused_twice_in_one_process_and_a_probe_keeps_it(tmp_path: Path):
    """Record locks never conflict within a process: the second acquire is refused by RunLock itself, and probing
    a lock this process holds must not close a descriptor of it (which would silently drop the lock)."""
    from segbench.locking import lock_held

    with RunLock(tmp_path, name="job.lock", what="job"):
        with pytest.raises(RunDirectoryError, match="in use by this process"):
            RunLock(tmp_path, name="job.lock", what="again").acquire()
        assert lock_held(tmp_path / "job.lock")
        probe = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, str(tmp_path / "job.lock")], capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert probe.stdout.strip() == "held", probe.stderr  # another process still sees it after our own probe
    assert not lock_held(tmp_path / "job.lock")


PROBE_SCRIPT = """
import sys
from segbench.locking import lock_held
print("held" if lock_held(sys.argv[1]) else "free")
"""
