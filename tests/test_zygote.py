"""CPU job processes forked from one pre-imported zygote: real forks, real jobs, the fallback when it is gone."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from segbench import registry, results, rundir
from segbench.config import RunConfig
from segbench.executors import LocalExecutor, LocalOptions
from segbench.executors.worker import Child, worker_args, worker_env
from segbench.executors.zygote import Zygote, _serve, fork_hazard
from segbench.job import JobSpec
from segbench.runner import run_comparison

pytestmark = pytest.mark.usefixtures("one_thread_job_processes")


@pytest.fixture
def probe_model():
    module = importlib.import_module("probe_models")  # tests/ is on sys.path (pytest's rootdir insertion)
    yield "parent_probe"
    registry.unregister_model("parent_probe")
    importlib.sys.modules.pop(module.__name__, None)


@pytest.mark.slow
def test_cpu_jobs_are_forked_from_the_zygote_and_finish(
    tiny_task: Path, tmp_path: Path, monkeypatch, probe_model, tiny_job_train
):
    probe = tmp_path / "parents.jsonl"
    monkeypatch.setenv("SEGBENCH_TEST_PROBE", str(probe))
    config = RunConfig(data=str(tiny_task), models=(probe_model, "fcn"), folds=2, train=tiny_job_train)
    run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False,
                   executor=LocalExecutor(LocalOptions(poll_s=0.1)))  # fmt: skip
    jobs = results.load_jobs(tmp_path / "run")
    assert list(jobs["status"]) == ["done"] * 4
    seen = [json.loads(line) for line in probe.read_text().splitlines()]
    job_builds = [entry for entry in seen if entry["pid"] != os.getpid()]  # the driver builds it too (FLOPs)
    assert len(job_builds) >= 2 and len({entry["pid"] for entry in job_builds}) == 2  # one process per job
    assert all("--zygote" in entry["parent"] for entry in job_builds), job_builds


def test_a_dead_zygote_falls_back_to_a_fresh_interpreter(tmp_path: Path):
    zygote = Zygote(worker_env(None, slots=1))
    try:
        zygote.process.kill()
        zygote.process.wait()
        spec = JobSpec(run_dir=str(tmp_path), model="fcn", fold=0)
        assert zygote.spawn(worker_args(spec)) is None
        child = Child(spec, None, slots=1, echo=False, zygote=zygote)  # fails fast (no manifest), the slow way
        assert child.process.wait(timeout=120) == 0 and hasattr(child.process, "communicate")
        child.finish()
        assert results.read_job_result(rundir.result_path(tmp_path, spec)).status == "failed"
    finally:
        zygote.close()


@pytest.mark.slow
def test_a_forked_child_reports_its_exit_code_and_its_signal(tmp_path: Path):
    zygote = Zygote(worker_env(None, slots=1))
    try:
        spec = JobSpec(run_dir=str(tmp_path), model="fcn", fold=0)
        child = zygote.spawn(worker_args(spec))  # output on a pipe: what the driver forwards with one slot
        child.stdout.read()  # EOF once the child (and everything it forked) has ended: no stray copy of the pipe
        assert child.wait(timeout=120) == 0
        assert "fcn" in rundir.worker_log_path(tmp_path, spec).read_text()
        assert results.read_job_result(rundir.result_path(tmp_path, spec)).status == "failed"

        # A child that is still importing its argv's modules when it gets SIGKILL: a negative return code.
        slow = JobSpec(run_dir=str(tmp_path / "slow"), model="fcn", fold=0, imports=("time_bomb_never_imported",))
        child = zygote.spawn(worker_args(slow))
        os.kill(child.pid, signal.SIGSTOP)  # cannot finish before the kill, however fast the machine
        child.kill()
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        zygote.close()
    assert zygote.process.returncode == 0  # closing the socket ends the zygote


@pytest.mark.slow
def test_the_zygote_ends_when_its_driver_goes_away(tmp_path: Path):
    zygote = Zygote(worker_env(None, slots=1))
    assert zygote.spawn(worker_args(JobSpec(run_dir=str(tmp_path), model="fcn", fold=0))) is not None
    zygote._socket.close()  # what the kernel does when the driver dies
    deadline = time.monotonic() + 30
    while zygote.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert zygote.process.returncode == 0


@pytest.mark.slow
def test_a_cuda_job_never_forks_from_the_zygote(tmp_path: Path):
    zygote = Zygote(worker_env(None, slots=1))
    try:
        spec = JobSpec(run_dir=str(tmp_path), model="fcn", fold=0, device="cuda:0")
        child = Child(spec, None, slots=1, echo=False, zygote=zygote)  # fails fast (no manifest), never forked
        assert hasattr(child.process, "communicate"), "a CUDA job was forked from the zygote"
        child.process.wait(timeout=120)
        child.finish()
    finally:
        zygote.close()


def test_the_zygote_refuses_to_fork_once_cuda_is_initialised(monkeypatch):
    assert fork_hazard() == ""  # the test process has not touched CUDA
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    assert "CUDA" in fork_hazard()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    serving = threading.Thread(target=_serve, args=(theirs, lambda argv: 0), daemon=True)  # fork would copy pytest
    serving.start()
    with open(os.devnull, "wb") as output:
        socket.send_fds(ours, [json.dumps({"argv": ["unused"]}).encode()], [output.fileno()])
        ours.settimeout(30)
        answer = json.loads(ours.recv(1 << 16))
    assert "pid" not in answer and "CUDA" in answer["error"]
    ours.close()  # EOF ends the serving loop
    serving.join(timeout=30)
    assert not serving.is_alive()
    theirs.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_jobs_start_afresh_and_finish(tiny_task: Path, tmp_path: Path, monkeypatch, probe_model, tiny_job_train):
    probe = tmp_path / "parents.jsonl"
    monkeypatch.setenv("SEGBENCH_TEST_PROBE", str(probe))
    config = RunConfig(data=str(tiny_task), models=(probe_model, "fcn"), folds=2, device="cuda", train=tiny_job_train)
    run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False,
                   executor=LocalExecutor(LocalOptions(poll_s=0.1)))  # fmt: skip
    jobs = results.load_jobs(tmp_path / "run")
    assert list(jobs["status"]) == ["done"] * 4 and set(jobs["device"]) == {"cuda:0"}
    job_builds = [json.loads(line) for line in probe.read_text().splitlines()]
    job_builds = [entry for entry in job_builds if entry["pid"] != os.getpid()]
    assert job_builds and not any("--zygote" in entry["parent"] for entry in job_builds), job_builds
