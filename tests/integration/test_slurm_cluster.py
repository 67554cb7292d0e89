"""``segbench run --executor slurm`` against a real Slurm cluster (``.ci/slurm-single-node.sh up`` in CI).

Skipped, with the reason, where no Slurm client is on PATH or the cluster does not answer. Every job is a tiny
CPU job (1 CPU, 1 GB); the drivers poll the scheduler every second or two (``--slurm-poll``) to keep the module
short. The cluster is expected to look like the CI one: one node, a default partition, accounting through slurmdbd
(the accounting test stops slurmdbd by the PID in ``/run/slurmdbd.pid`` and starts it again).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from segbench import results, rundir
from segbench.config import config_from_dict
from segbench.executors import run_in_process
from segbench.executors.slurm_queue import SlurmQueue
from segbench.executors.state import read_record, recorded_job_alive
from segbench.rundir import JobKey
from segbench.runner import run_comparison


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no Slurm client (sbatch) on PATH; `.ci/slurm-single-node.sh install && … up` starts a one-node cluster"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%a"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the Slurm cluster does not answer (sinfo: {exc})"
    if proc.returncode != 0 or "up" not in proc.stdout.split():
        return f"the Slurm cluster does not answer (sinfo: {(proc.stderr or proc.stdout).strip()[:200]})"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'segbench[slurm]')"
    return None


def _sacct_works() -> bool:
    try:
        return subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]
ACCOUNTING = PROBLEM is None and _sacct_works()  # False on a cluster without slurmdbd (ACCOUNTING=0 … up)

# One thread everywhere: Slurm pins each job to its CPU, and the local reference must compute the same numbers.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
JOB = ["--patch", "16", "16", "16", "--batch-size", "1", "--no-report", "-q"]
SLURM = ["--executor", "slurm", "--slurm-gpus", "0", "--slurm-cpus", "1", "--slurm-mem", "1", "--slurm-poll", "1"]


def segbench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "segbench", *args], capture_output=True, text=True, timeout=timeout, env=ENV
    )


def start(*args: str, log: Path) -> subprocess.Popen:
    """A driver in its own session (so a SIGKILL hits it alone), its stderr in ``log``."""
    command = [sys.executable, "-m", "segbench", "-v", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=ENV, start_new_session=True)


def job_id(run_dir: Path, model: str, fold: int) -> str:
    return json.loads(rundir.submitit_record_path(run_dir, JobKey(model, fold)).read_text())["job_id"]


def wait_until(condition, *, timeout: float, what: str, driver: subprocess.Popen | None = None) -> float:
    """Seconds it took for ``condition()`` to hold (fails after ``timeout`` or when ``driver`` exits first)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if driver is not None and driver.poll() is not None:
            raise AssertionError(f"the driver exited ({driver.returncode}) before {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def training(run_dir: Path, model: str, fold: int) -> bool:
    return rundir.learning_curve_path(run_dir, JobKey(model, fold)).exists()


def job_logs(run_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(rundir.submitit_dir(run_dir).glob("*_log.*")))


def numeric_metrics(run_dir: Path) -> pd.DataFrame:
    metrics = results.load_metrics(run_dir).sort_values(["model", "fold", "case_id", "label"]).reset_index(drop=True)
    return metrics.select_dtypes("number")


def iterations_for(seconds: float, speed: float) -> int:
    """An iteration budget of about ``seconds`` of training at ``speed`` it/s (a multiple of 50)."""
    return max(200, math.ceil(seconds * speed / 50) * 50)


@pytest.fixture(scope="module")
def comparison(tiny_task: Path, tmp_path_factory) -> dict[str, Path]:
    """The same 2-model × 2-fold comparison through Slurm and with the local executor."""
    base = tmp_path_factory.mktemp("slurm-comparison")
    common = ["run", "--data", str(tiny_task), "--models", "fcn,unet", "--folds", "2", "--iterations", "20", *JOB]
    runs = {"slurm": base / "slurm", "local": base / "local"}
    slurm = segbench(*common, *SLURM, "--slurm-time", "10", "--out", str(runs["slurm"]))
    assert slurm.returncode == 0, slurm.stderr
    local = segbench(*common, "--device", "cpu", "--out", str(runs["local"]))
    assert local.returncode == 0, local.stderr
    return runs


@pytest.fixture(scope="module")
def speed(comparison) -> float:
    """fcn training iterations per second of one Slurm job on this cluster (sizes the longer jobs below)."""
    jobs = results.load_jobs(comparison["slurm"])
    return float(jobs.loc[jobs["model"] == "fcn", "train_iters_per_s"].mean())


def test_comparison_through_slurm_equals_the_local_executor(comparison):
    run_dir = comparison["slurm"]
    ids = [job_id(run_dir, model, fold) for model in ("fcn", "unet") for fold in (0, 1)]
    assert len({i.split("_")[0] for i in ids}) == 1 and all("_" in i for i in ids)  # one job array
    if ACCOUNTING:
        accounted = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ids[0].split("_")[0]],
                                   capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert sorted(re.findall(r"^(\S+)\|COMPLETED", accounted, re.M)) == sorted(ids)
    slurm_jobs = results.load_jobs(run_dir).sort_values(["model", "fold"]).reset_index(drop=True)
    local_jobs = results.load_jobs(comparison["local"]).sort_values(["model", "fold"]).reset_index(drop=True)
    assert (slurm_jobs["status"] == "done").all() and (local_jobs["status"] == "done").all()
    assert slurm_jobs[["model", "fold", "final_loss"]].equals(local_jobs[["model", "fold", "final_loss"]])
    pd.testing.assert_frame_equal(numeric_metrics(run_dir), numeric_metrics(comparison["local"]))


def test_sbatch_refusals_are_one_sentence_naming_the_flag(tiny_task, tmp_path):
    common = ["run", "--data", str(tiny_task), "--models", "fcn", "--folds", "2", "--iterations", "2", *JOB,
              "--executor", "slurm", "--slurm-mem", "1", "--slurm-poll", "1"]  # fmt: skip
    too_many = segbench(*common, "--slurm-gpus", "0", "--slurm-cpus", "4096", "--out", str(tmp_path / "cpus"))
    assert too_many.returncode == 1 and "Traceback" not in too_many.stderr
    assert "--slurm-cpus" in too_many.stderr.strip().splitlines()[-1]
    no_gpus = segbench(*common, "--slurm-gpus", "1", "--slurm-cpus", "1", "--out", str(tmp_path / "gpus"))
    assert no_gpus.returncode == 1 and "Traceback" not in no_gpus.stderr
    assert "--slurm-gpus" in no_gpus.stderr.strip().splitlines()[-1]


def test_time_limit_signal_checkpoints_requeues_and_resumes_to_the_same_curve(tiny_task, tmp_path, speed):
    """Slurm's own time-limit signal, the default DataLoader worker, --slurm-time 2 (the signal comes 30-90 s in)."""
    run_dir, log = tmp_path / "slurm", tmp_path / "log"
    driver = start("run", "--data", str(tiny_task), "--models", "fcn", "--folds", "2",
                   "--iterations", str(iterations_for(110, speed)), *JOB, *SLURM, "--slurm-time", "2",
                   "--out", str(run_dir), log=log)  # fmt: skip
    # One job is enough, and leaves a CPU for the reference: fold 1 is cancelled before it starts.
    wait_until(lambda: rundir.submitit_record_path(run_dir, JobKey("fcn", 1)).exists(), timeout=120,
               what="the submission", driver=driver)  # fmt: skip
    subprocess.run(["scancel", job_id(run_dir, "fcn", 1)], check=True)
    # The uninterrupted reference meanwhile, in this process: the run's own config, fold 0 only, one thread.
    config = config_from_dict(results.load_manifest(run_dir)["config"])
    run_comparison(config, run_dir=tmp_path / "local", progress=False, report=False,
                   executor=lambda specs: run_in_process([s for s in specs if s.fold == 0]))  # fmt: skip
    assert driver.wait(timeout=900) == 1, log.read_text()  # fold 1 was cancelled

    logs = job_logs(run_dir)
    assert "Caught signal SIGUSR2" in logs and "exited unexpectedly" not in logs
    saved = [int(i) for i in re.findall(r"checkpoint saved at iteration (\d+)", logs)]
    resumed = [int(i) for i in re.findall(r"resuming at iteration (\d+)", logs)]
    assert saved and sorted(saved) == sorted(resumed)  # each attempt went on exactly where the last one stopped
    if ACCOUNTING:
        history = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "-o", "State", "-j", job_id(run_dir, "fcn", 0)],
                                 capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        assert "REQUEUED" in history and history[-1] == "COMPLETED", history
    jobs = results.load_jobs(run_dir).set_index("fold")
    assert jobs.loc[0, "status"] == "done", jobs.loc[0, "reason"]
    curves = [pd.read_csv(rundir.learning_curve_path(d, JobKey("fcn", 0)))[["iteration", "loss", "lr"]]
              for d in (run_dir, tmp_path / "local")]  # fmt: skip
    pd.testing.assert_frame_equal(*curves)


def test_killed_driver_and_job_then_resume_resubmits_only_the_lost_job(tiny_task, tmp_path, speed):
    run_dir = tmp_path / "run"
    command = ["run", "--data", str(tiny_task), "--models", "fcn", "--folds", "3",
               "--iterations", str(iterations_for(20, speed)), *JOB, *SLURM, "--slurm-time", "10",
               "--out", str(run_dir)]  # fmt: skip
    driver = start(*command, log=tmp_path / "log")
    wait_until(lambda: training(run_dir, "fcn", 0) and training(run_dir, "fcn", 1), timeout=120,
               what="two jobs training", driver=driver)  # fmt: skip
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    before = {fold: job_id(run_dir, "fcn", fold) for fold in range(3)}
    raw = subprocess.run(["squeue", "-h", "-j", before[1], "-o", "%A"], capture_output=True, text=True).stdout.strip()
    pids = subprocess.run(["scontrol", "listpids", raw], capture_output=True, text=True, check=True).stdout
    step_zero = [int(f[0]) for f in (line.split() for line in pids.splitlines()[1:]) if f[2] == "0"]
    assert step_zero, pids
    for pid in step_zero:  # the job's python and its loader worker, like the OOM killer would
        os.kill(pid, signal.SIGKILL)
    queue = SlurmQueue()
    wait_until(lambda: queue.refresh([before[1]]) or not queue.alive(before[1]), timeout=60, what="job 1 ending")

    resumed = segbench(*command, "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = {fold: job_id(run_dir, "fcn", fold) for fold in range(3)}
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert (results.load_jobs(run_dir)["status"] == "done").all()


def test_scancel_is_reported_promptly_and_the_job_checkpoints_first(tiny_task, tmp_path, speed):
    run_dir, log = tmp_path / "run", tmp_path / "log"
    driver = start("run", "--data", str(tiny_task), "--models", "fcn", "--folds", "2",
                   "--iterations", str(iterations_for(120, speed)), *JOB, *SLURM, "--slurm-time", "10",
                   "--out", str(run_dir), log=log)  # fmt: skip
    wait_until(lambda: training(run_dir, "fcn", 0), timeout=120, what="job 0 training", driver=driver)
    cancelled = job_id(run_dir, "fcn", 0)
    subprocess.run(["scancel", cancelled], check=True)
    took = wait_until(lambda: f"fcn fold 0: killed — slurm job {cancelled} ended (CANCELLED" in log.read_text(),
                      timeout=30, what="the driver reporting the cancelled job", driver=driver)  # fmt: skip
    assert took < 20  # KillWait (5 s) + one poll (1 s) + a step, not minutes
    subprocess.run(["scancel", job_id(run_dir, "fcn", 1)], check=True)
    assert driver.wait(timeout=60) == 1
    jobs = results.load_jobs(run_dir).set_index("fold")
    assert set(jobs["status"]) == {"killed"} and "CANCELLED" in jobs.loc[0, "reason"]
    assert re.search(r"checkpoint saved at iteration \d+", job_logs(run_dir))  # SIGTERM: a checkpoint, then exit


@pytest.fixture
def accounting_stopped():
    """``sacct`` failing: slurmdbd stopped (and started again afterwards), or a cluster without accounting."""
    if not ACCOUNTING:
        yield
        return
    pid_file = Path("/run/slurmdbd.pid")
    if not pid_file.exists() or not shutil.which("slurmdbd"):
        pytest.skip("this cluster's slurmdbd is not the CI one (/run/slurmdbd.pid); cannot stop accounting here")
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    wait_until(lambda: not _sacct_works(), timeout=30, what="sacct failing")
    try:
        yield
    finally:
        subprocess.run([shutil.which("slurmdbd")], check=True)
        wait_until(_sacct_works, timeout=60, what="sacct answering again")


def test_without_accounting_the_driver_neither_hangs_nor_misreports(tiny_task, tmp_path, speed, accounting_stopped):
    run_dir, log = tmp_path / "run", tmp_path / "log"
    driver = start("run", "--data", str(tiny_task), "--models", "fcn", "--folds", "2",
                   "--iterations", str(iterations_for(15, speed)), *JOB, *SLURM, "--slurm-time", "10",
                   "--out", str(run_dir), log=log)  # fmt: skip
    wait_until(lambda: training(run_dir, "fcn", 0), timeout=120, what="job 0 training", driver=driver)
    subprocess.run(["scancel", job_id(run_dir, "fcn", 0)], check=True)
    assert driver.wait(timeout=180) == 1, log.read_text()
    text = log.read_text()
    assert "sacct does not answer" in text and "using squeue" in text
    jobs = results.load_jobs(run_dir).set_index("fold")
    assert jobs.loc[0, "status"] == "killed" and "CANCELLED" in jobs.loc[0, "reason"]
    assert jobs.loc[1, "status"] == "done"
    # A resumed driver does not re-attach to the cancelled job (the hang of a resume without accounting).
    assert not recorded_job_alive(read_record(rundir.job_dir(run_dir, JobKey("fcn", 0))))


def test_jobs_pending_for_a_hopeless_reason_are_reported_not_waited_on_silently(tiny_task, tmp_path):
    partition = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()[0]
    subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=DOWN"], check=True)
    try:
        log = tmp_path / "log"
        driver = start("run", "--data", str(tiny_task), "--models", "fcn", "--folds", "2", "--iterations", "2",
                       *JOB, *SLURM, "--slurm-time", "10", "--out", str(tmp_path / "run"), log=log)  # fmt: skip
        wait_until(lambda: "Slurm reason PartitionDown" in log.read_text(), timeout=120,
                   what="the driver saying why the jobs pend", driver=driver)  # fmt: skip
        assert "--slurm-partition" in log.read_text()
    finally:
        subprocess.run(["scontrol", "update", f"PartitionName={partition}", "State=UP"], check=True)
    assert driver.wait(timeout=180) == 0, log.read_text()  # and it goes on once the partition is back
