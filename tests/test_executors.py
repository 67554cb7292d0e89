"""Executors: local GPU slots (fake GPU ids, real worker processes), submitit (local + debug executors, real
subprocesses and signals), requeue after preemption, and a resumed driver that resubmits only lost jobs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from segbench import results, rundir
from segbench.config import RunConfig, TrainConfig
from segbench.errors import ConfigError
from segbench.executors import (
    GpuSlots,
    LocalExecutor,
    LocalOptions,
    SlurmOptions,
    SubmititExecutor,
    job_lock_held,
    job_state,
    make_executor,
    parse_gpu_ids,
    read_record,
    slurm_parameters,
    worker_command,
    worker_env,
)
from segbench.executors.slurm_queue import expand_job_ids
from segbench.job import JobSpec, run_job
from segbench.locking import RunLock
from segbench.rundir import JOB_LOCK_FILE, JobKey
from segbench.rundir import SUBMITIT_RECORD_FILE as RECORD_FILE
from segbench.rundir import WORKER_LOG_FILE as WORKER_LOG
from segbench.runner import run_comparison

# Timing columns differ between any two runs; everything else must be identical.
TIMING = ("train_seconds", "train_iters_per_s", "train_voxels_per_s", "data_wait_share", "achieved_gflop_per_s",
          "peak_rss_mb", "inference_seconds_per_case", "job_seconds", "device")  # fmt: skip


def tiny_config(task: Path, models: tuple[str, ...] = ("fcn", "unet"), **train) -> RunConfig:
    train = {"iterations": 3, "patch_size": (16, 16, 16), "batch_size": 2, "num_workers": 0, **train}
    return RunConfig(data=str(task), models=models, folds=2, train=TrainConfig(**train))


pytestmark = pytest.mark.usefixtures("one_thread_job_processes")


def tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    jobs = results.load_jobs(run_dir)
    return results.load_metrics(run_dir), jobs.drop(columns=[c for c in TIMING if c in jobs])


@pytest.fixture(scope="module")
def reference(tiny_task: Path, tmp_path_factory) -> Path:
    """A 2-model × 2-fold run executed in-process: the tables every executor must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    outcome = run_comparison(tiny_config(tiny_task), run_dir=run_dir, progress=False, report=False)
    assert outcome.all_done, [r.reason for r in outcome.results]
    return run_dir


def prepared_run(task: Path, run_dir: Path, **train) -> Path:
    """A run directory with manifest, splits and cache but no job run yet (an executor that runs nothing)."""
    run_comparison(tiny_config(task, **train), run_dir=run_dir, progress=False, report=False, executor=lambda s: None)
    return run_dir


def spec(run_dir: Path, model: str, fold: int) -> JobSpec:
    return JobSpec(run_dir=str(run_dir), model=model, fold=fold)  # default cache: $SEGBENCH_CACHE (conftest)


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- GPU slots ---------------------------------------------------------------------------------------------------


def test_gpu_slots_hand_out_each_gpu_once_until_it_is_given_back():
    slots = GpuSlots(["3", "5", "7"])
    taken = [slots.take(), slots.take(), slots.take()]
    assert sorted(taken) == ["3", "5", "7"]  # three concurrent jobs, three distinct devices
    assert slots.take() is None  # a fourth job waits
    slots.give_back("5")
    assert slots.take() == "5"
    with pytest.raises(ValueError):
        GpuSlots([])


def test_worker_sees_exactly_its_gpu_and_a_share_of_the_cpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    env = worker_env("7", slots=2)
    assert env["CUDA_VISIBLE_DEVICES"] == "7"
    assert int(env["OMP_NUM_THREADS"]) == max(1, len(os.sched_getaffinity(0)) // 2)
    # The CPUs allotted to the driver (a Slurm job's 16 on a 128-core node), not the machine's count.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "cpu_count", lambda: 128)
    assert worker_env("0", slots=4)["OMP_NUM_THREADS"] == "4"
    command = worker_command(JobSpec(run_dir="/r; rm -rf /", model="fcn", fold=1, device="cuda:0"))
    assert command[:3] == [sys.executable, "-m", "segbench.executors"]  # an argument list: no shell ever parses it
    assert json.loads(command[3])["run_dir"] == "/r; rm -rf /"


@pytest.mark.parametrize("text", ["", "0,,1", "0,0", "a", "0;1", "1 2"])
def test_bad_gpu_lists_are_one_clear_error(text: str):
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpu_ids(text)
    assert parse_gpu_ids("0, 2,GPU-1a2b") == ("0", "2", "GPU-1a2b")


@pytest.mark.slow
def test_one_job_per_fake_gpu_in_real_worker_processes_gives_the_in_process_tables(
    tiny_task: Path, tmp_path: Path, reference: Path
):
    run_dir = tmp_path / "run"
    executor = LocalExecutor(LocalOptions(gpus=("5", "7"), poll_s=0.1))
    outcome = run_comparison(
        tiny_config(tiny_task, models=("fcn",)), run_dir=run_dir, progress=False, report=False, executor=executor
    )
    assert outcome.all_done, [r.reason for r in outcome.results]
    seen = []
    for fold in (0, 1):
        text = (rundir.job_dir(run_dir, JobKey("fcn", fold)) / WORKER_LOG).read_text()
        seen += re.findall(r"CUDA_VISIBLE_DEVICES=(\S+),", text)
    assert sorted(seen) == ["5", "7"]  # each child saw exactly one, distinct, device
    metrics, jobs = tables(run_dir)
    ref_metrics, ref_jobs = tables(reference)
    pd.testing.assert_frame_equal(metrics, ref_metrics[ref_metrics["model"] == "fcn"].reset_index(drop=True))
    pd.testing.assert_frame_equal(jobs, ref_jobs[ref_jobs["model"] == "fcn"].reset_index(drop=True))


@pytest.mark.slow
def test_a_worker_that_dies_without_a_result_is_recorded_and_the_others_finish(tiny_task: Path, tmp_path: Path):
    run_dir = prepared_run(tiny_task, tmp_path / "run")
    doomed, healthy = spec(run_dir, "fcn", 0), spec(run_dir, "fcn", 1)
    # A worker killed by the kernel (OOM killer, `kill -9`) cannot write anything: the driver must.
    killer = threading.Thread(target=_kill_worker_of, args=(rundir.job_dir(run_dir, JobKey("fcn", 0)),), daemon=True)
    killer.start()
    LocalExecutor(LocalOptions(gpus=("0", "1"), poll_s=0.1))([doomed, healthy])
    killer.join()
    dead = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE)
    assert dead.status == "killed" and "SIGKILL" in dead.reason and "--resume" in dead.reason
    assert re.search(r"process tree \d+ MiB", dead.reason)  # MiB (2**20 bytes), named as such
    alive = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 1)) / rundir.RESULT_FILE)
    assert alive.status == "done"


def _kill_worker_of(folder: Path) -> None:
    def worker() -> psutil.Process | None:
        for process in psutil.Process().children():
            if any(str(folder.parent.parent.parent) in part and '"fold": 0' in part for part in process.cmdline()):
                return process
        return None

    wait_until(lambda: worker() is not None, what="the worker process")
    worker().send_signal(signal.SIGKILL)


# --- submitit ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_debug_executor_runs_the_grid_through_submitit_with_the_same_tables(
    tiny_task: Path, tmp_path: Path, reference: Path
):
    run_dir = tmp_path / "run"
    outcome = run_comparison(
        tiny_config(tiny_task), run_dir=run_dir, progress=False, report=False, executor=SubmititExecutor("debug")
    )
    assert outcome.all_done, [r.reason for r in outcome.results]
    for a, b in zip(tables(run_dir), tables(reference), strict=True):
        pd.testing.assert_frame_equal(a, b)
    record = read_record(rundir.job_dir(run_dir, JobKey("unet", 1)))
    assert record["backend"] == "debug" and record["folder"] == str((run_dir / "slurm").absolute())
    assert list((run_dir / "slurm").glob("*_log.out"))  # job logs under RUN_DIR/slurm


@pytest.mark.slow
def test_preempted_job_checkpoints_requeues_and_continues_where_it_stopped(tiny_task: Path, tmp_path: Path):
    # A time budget makes the job long enough to interrupt however fast this machine is; no periodic checkpoint
    # falls inside it, so the only checkpoint is the one the signal asks for.
    run_dir = prepared_run(tiny_task, tmp_path / "run", time_budget_s=4.0, checkpoint_every=100_000, log_every=2)
    executor = SubmititExecutor("local")
    [tracked] = executor.submit([spec(run_dir, "fcn", 0)])
    folder = rundir.job_dir(run_dir, JobKey("fcn", 0))
    wait_until(lambda: (folder / rundir.LEARNING_CURVE_FILE).exists(), what="training under way")
    # What Slurm does before preempting a job or at its time limit: SIGUSR2 to the job's process.
    [task] = psutil.Process(int(tracked.job.job_id)).children()
    task.send_signal(signal.SIGUSR2)
    executor.wait([tracked])

    result = results.read_job_result(folder / rundir.RESULT_FILE)
    assert result.status == "done", result.reason
    log_text = Path(tracked.job.paths.stderr).read_text() + Path(tracked.job.paths.stdout).read_text()
    assert "attempt 2" in log_text  # requeued: the checkpoint() submission ran
    saved = re.search(r"checkpoint saved at iteration (\d+)", log_text)
    resumed = re.search(r"resuming at iteration (\d+)", log_text)
    assert saved and resumed and int(resumed.group(1)) == int(saved.group(1)) > 0  # the step the signal came in
    curve = pd.read_csv(folder / rundir.LEARNING_CURVE_FILE)
    assert curve["iteration"].is_monotonic_increasing and curve["iteration"].is_unique


@pytest.mark.slow
def test_resumed_driver_waits_for_running_jobs_and_resubmits_only_lost_ones(tiny_task: Path, tmp_path: Path):
    config = tiny_config(tiny_task)
    run_dir = prepared_run(tiny_task, tmp_path / "run")
    # fcn fold 0 finished before the driver died.
    assert run_job(spec(run_dir, "fcn", 0)).status == "done"
    done_mtime = (rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE).stat().st_mtime_ns
    # fcn fold 1 is still running: a real submitit job whose driver died right after submitting it.
    [running] = SubmititExecutor("local").submit([spec(run_dir, "fcn", 1)])
    # unet fold 0 was submitted too, but its job is gone (its recorded process no longer exists).
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"backend": "local", "job_id": gone.stdout.strip(), "folder": str(run_dir / "slurm"), "submitted_at": ""}
    rundir.job_dir(run_dir, JobKey("unet", 0)).mkdir(parents=True)
    (rundir.job_dir(run_dir, JobKey("unet", 0)) / RECORD_FILE).write_text(json.dumps(stale))
    # unet fold 1 was never submitted.
    assert job_state(spec(run_dir, "fcn", 1)) == "running"
    assert job_state(spec(run_dir, "unet", 0)) == job_state(spec(run_dir, "unet", 1)) == "lost"

    outcome = run_comparison(
        config, run_dir=run_dir, resume=True, progress=False, report=False, executor=SubmititExecutor("debug")
    )
    assert outcome.all_done, [r.reason for r in outcome.results]
    records = {(m, f): read_record(rundir.job_dir(run_dir, JobKey(m, f))) for m in ("fcn", "unet") for f in (0, 1)}
    assert records[("fcn", 0)] is None  # finished: not touched ...
    assert (rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE).stat().st_mtime_ns == done_mtime
    assert records[("fcn", 1)]["job_id"] == running.job.job_id  # running: waited for, never a second writer
    assert records[("unet", 0)]["backend"] == records[("unet", 1)]["backend"] == "debug"  # lost: resubmitted
    assert not running.is_active()


def test_a_job_whose_lock_is_held_counts_as_running_and_is_waited_for(tiny_task: Path, tmp_path: Path):
    run_dir = prepared_run(tiny_task, tmp_path / "run")
    job = spec(run_dir, "fcn", 0)
    folder = rundir.job_dir(run_dir, JobKey("fcn", 0))
    folder.mkdir(parents=True)
    assert not job_lock_held(folder) and job_state(job) == "lost"
    lock = RunLock(folder, name=JOB_LOCK_FILE, what="another segbench process").acquire()
    try:
        assert job_lock_held(folder) and job_state(job) == "running"
        threading.Timer(1.0, lock.release).start()
        started = time.monotonic()
        SubmititExecutor("debug")([job])
        assert time.monotonic() - started >= 0.9  # it waited for the holder ...
        assert read_record(folder) is None  # ... and never submitted a second writer
    finally:
        lock.release()
    assert job_state(job) == "lost"  # the holder ended without a result: the next resume runs it


# --- options and the command line ----------------------------------------------------------------------------------


def test_slurm_parameters_are_explicit_and_validated():
    params = slurm_parameters(SlurmOptions(partition="gpu,gpu-long", time_min=90, gpus_per_job=1, mem_gb=1.5))
    assert params["time"] == 90 and params["gpus_per_node"] == 1 and params["partition"] == "gpu,gpu-long"
    assert params["mem"] == "1536MB" and params["cpus_per_task"] == 8 and params["ntasks_per_node"] == 1
    assert params["setup"] == ["export SRUN_CPUS_PER_TASK=8"]  # else Slurm 22.05-23.02 binds the step to one CPU
    assert "gpus_per_node" not in slurm_parameters(SlurmOptions(gpus_per_job=0))
    assert slurm_parameters(SlurmOptions(mem_gb=16))["mem"] == "16GB"
    assert params["job_name"] == "segbench"
    named = slurm_parameters(SlurmOptions(), run_name="run-20261130 04:00;x")["job_name"]
    assert named == "segbench-run-20261130_04_00_x"  # squeue tells runs apart; nothing unsafe in the batch script
    for bad in ("gpu\nrm -rf ~", "gpu; reboot", "a b", "'x'"):
        with pytest.raises(ConfigError, match="--slurm-partition"):
            slurm_parameters(SlurmOptions(partition=bad))
    for too_short in (0, 1):  # Slurm may signal a minute early: before the job could handle it
        with pytest.raises(ConfigError, match="--slurm-time must be at least 2 minutes"):
            slurm_parameters(SlurmOptions(time_min=too_short))
    with pytest.raises(ConfigError, match="--slurm-poll"):
        slurm_parameters(SlurmOptions(poll_s=0))


def test_slurm_batch_script_exports_srun_cpus_per_task_before_its_srun_step():
    slurm = pytest.importorskip("submitit.slurm.slurm")
    params = slurm_parameters(SlurmOptions(cpus_per_job=6))
    params.pop("array_parallelism")  # an executor option, not a batch-script line
    script = slurm._make_sbatch_string(command="python -m job", folder="/tmp/f", **params).splitlines()
    srun = next(i for i, line in enumerate(script) if line.startswith("srun "))
    assert "export SRUN_CPUS_PER_TASK=6" in script[:srun] and "#SBATCH --cpus-per-task=6" in script


def test_more_than_one_gpu_per_slurm_job_is_refused_in_one_sentence(tmp_path, monkeypatch):
    from segbench.executors import SubmititExecutor

    # A job trains on one GPU: a second GPU per array task would sit idle for the whole run.
    for gpus in (2, 8):
        with pytest.raises(ConfigError, match=f"--slurm-gpus {gpus}: a segbench job trains on one GPU") as error:
            slurm_parameters(SlurmOptions(gpus_per_job=gpus))
        assert "\n" not in str(error.value) and "--slurm-gpus 1" in str(error.value)
    monkeypatch.setenv("PATH", f"{_fake_srun(tmp_path)}:{os.environ['PATH']}")
    with pytest.raises(ConfigError, match="--slurm-gpus 2: a segbench job trains on one GPU"):
        SubmititExecutor("slurm", SlurmOptions(gpus_per_job=2))  # refused when the executor is made: before any work


def test_slurm_job_id_fields_expand_to_array_tasks():
    assert expand_job_ids("5_[1-3%2]") == ["5_1", "5_2", "5_3"]
    assert expand_job_ids("5_[0,4-5]") == ["5_0", "5_4", "5_5"]
    assert expand_job_ids("7_2") == ["7_2"] and expand_job_ids("8") == ["8"]


def test_make_executor_refuses_mixed_options_and_unknown_names():
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(ConfigError, match="--executor"):
        make_executor("kubernetes")
    with pytest.raises(ConfigError, match="--slurm-"):
        make_executor("local", options=SlurmOptions())
    with pytest.raises(ConfigError, match="--gpus"):
        make_executor("slurm", options=LocalOptions(gpus=("0",)))


def test_slurm_without_submitit_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what Python does when the package is absent: ImportError
    with pytest.raises(ConfigError, match=r"pip install 'segbench\[slurm\]'"):
        make_executor("slurm")


@pytest.mark.skipif(shutil.which("srun") is not None, reason="this machine has a Slurm client")
@pytest.mark.slow
def test_cli_slurm_misuse_is_one_clear_error_before_any_work(tmp_path: Path):
    command = [sys.executable, "-m", "segbench", "run", "--executor", "slurm", "--out", str(tmp_path / "run")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --executor slurm needs Slurm's srun")
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()  # refused before any work

    command = [sys.executable, "-m", "segbench", "run", "--slurm-time", "30", "--out", str(tmp_path / "run")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--slurm-time: Slurm options need --executor slurm" in proc.stderr


def test_slurm_jobs_resolve_the_device_where_they_run_not_on_the_login_node(tmp_path, monkeypatch):
    from segbench.executors import SlurmOptions, SubmititExecutor
    from segbench.job import JobSpec

    monkeypatch.setenv("PATH", f"{_fake_srun(tmp_path)}:{os.environ['PATH']}")
    with_gpu = SubmititExecutor("slurm", SlurmOptions(gpus_per_job=1))
    cpu_only = SubmititExecutor("slurm", SlurmOptions(gpus_per_job=0))
    assert with_gpu.resolves_device and cpu_only.resolves_device
    spec = JobSpec(run_dir=str(tmp_path), model="fcn", fold=0, device="auto")
    assert with_gpu._job_device(spec) == "cuda"
    assert cpu_only._job_device(spec) == "cpu"
    assert with_gpu._job_device(JobSpec(run_dir=str(tmp_path), model="fcn", fold=0, device="cpu")) == "cpu"


def _fake_srun(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"  # a login node has the Slurm client, not necessarily a GPU
    folder.mkdir(exist_ok=True)
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "srun").chmod(0o755)
    return folder


def test_slurm_device_is_checked_against_the_gpus_each_job_allocates(tmp_path, monkeypatch, caplog):
    from segbench.executors import SlurmOptions, SubmititExecutor

    monkeypatch.setenv("PATH", f"{_fake_srun(tmp_path)}:{os.environ['PATH']}")
    cpu_jobs = SubmititExecutor("slurm", SlurmOptions(gpus_per_job=0))
    one_gpu = SubmititExecutor("slurm", SlurmOptions(gpus_per_job=1))
    with pytest.raises(ConfigError, match="--device cuda needs a GPU in every Slurm job.*--slurm-gpus 1"):
        cpu_jobs.check_device("cuda")
    with pytest.raises(ConfigError, match=r"--device cuda:1: each Slurm job sees only its own 1 GPU\(s\)"):
        one_gpu.check_device("cuda:1")
    with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda or cuda:N"):
        one_gpu.check_device("mps")
    assert [one_gpu.check_device(d) for d in ("auto", "cuda", "cuda:0")] == ["auto", "cuda", "cuda:0"]
    assert cpu_jobs.check_device("cpu") == "cpu" and cpu_jobs.check_device("auto") == "auto"
    with caplog.at_level("WARNING"):
        assert one_gpu.check_device("cpu") == "cpu"
    assert "holds GPUs it never uses" in caplog.text


@pytest.mark.slow
def test_cli_slurm_cuda_without_gpus_is_refused_before_any_job(tiny_task: Path, tmp_path: Path):
    pytest.importorskip("submitit")
    env = {**os.environ, "PATH": f"{_fake_srun(tmp_path)}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--executor", "slurm",
               "--slurm-gpus", "0", "--device", "cuda", "--folds", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "error: --device cuda needs a GPU in every Slurm job" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
