"""``--executor local``: jobs in this process on the CPU or one GPU, or one worker process per GPU.

With several GPUs, one worker process per GPU (``python -m segbench.executors``) that sees exactly one device through
``CUDA_VISIBLE_DEVICES`` and runs on ``cuda:0``. Each worker's output goes to the job folder's ``worker.log``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from segbench import rundir
from segbench.errors import ConfigError
from segbench.executors.base import job_progress_bar, log_job_start
from segbench.executors.inprocess import run_in_process
from segbench.executors.state import split_running, wait_for_locks, write_missing_result
from segbench.job import JobSpec, run_job
from segbench.stop import install_interrupt_handlers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalOptions:
    """Options of ``--executor local``."""

    gpus: tuple[str, ...] | None = None  # CUDA_VISIBLE_DEVICES ids, one concurrent job each; None = all visible
    poll_s: float = 0.5  # how often the driver checks its worker processes


def visible_gpu_ids() -> tuple[str, ...]:
    """The GPU ids this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (default: ``0 .. count-1``)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(part.strip() for part in listed.split(",") if part.strip())[:count]
    return tuple(str(index) for index in range(count))


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """``"0,1,3"`` → ``("0", "1", "3")``.

    Raises:
        ConfigError: empty, repeated or malformed ids (message names ``--gpus``).
    """
    ids = tuple(part.strip() for part in text.split(","))
    if not ids or any(not re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F/-]+", i) for i in ids):
        raise ConfigError(f"--gpus takes comma-separated GPU ids such as 0,1,3 (got {text!r})")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus lists a GPU twice ({text!r}); give each id once")
    return ids


class GpuSlots:
    """One slot per GPU id: a job takes a free slot and gives it back when it ends (at most one job per GPU)."""

    def __init__(self, gpu_ids: Sequence[str]) -> None:
        if not gpu_ids:
            raise ValueError("GpuSlots needs at least one GPU id")
        self._free = list(gpu_ids)

    def take(self) -> str | None:
        """A free GPU id, or ``None`` when every GPU is busy."""
        return self._free.pop(0) if self._free else None

    def give_back(self, gpu_id: str) -> None:
        self._free.append(gpu_id)


def worker_command(spec: JobSpec) -> list[str]:
    """Argument list (no shell) of the worker process that runs one job: ``python -m segbench.executors SPEC``."""
    return [sys.executable, "-m", "segbench.executors", json.dumps(asdict(spec))]


def worker_env(gpu_id: str, *, slots: int) -> dict[str, str]:
    """Environment of a worker: exactly one visible GPU, and a fair share of the CPU threads."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = gpu_id
    # N workers each defaulting to every core would oversubscribe the CPU that feeds the GPUs.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // slots)))
    return env


class LocalExecutor:
    """``--executor local``: in-process on the CPU or one GPU; one worker process per GPU when there are several."""

    resolves_device = False  # the driver resolves --device (it runs on the machine the jobs run on)

    def __init__(self, options: LocalOptions = LocalOptions()) -> None:
        self.options = options

    def __call__(self, specs: list[JobSpec]) -> None:
        todo, running = split_running(specs)
        gpu_ids = self.options.gpus
        on_gpu = bool(specs) and specs[0].device == "cuda"  # "cuda:N" names one device: the user chose it
        if gpu_ids is None and on_gpu:
            gpu_ids = visible_gpu_ids()
        if gpu_ids is not None and (len(gpu_ids) > 1 or self.options.gpus is not None):
            run_on_gpus(todo, gpu_ids, poll_s=self.options.poll_s)
        else:
            run_in_process(todo)
        wait_for_locks(running, self.options.poll_s)


def run_on_gpus(specs: Sequence[JobSpec], gpu_ids: Sequence[str], *, poll_s: float = 0.5) -> None:
    """Run ``specs`` as worker processes, at most one per GPU at a time, each seeing only its GPU.

    A CUDA job runs on ``cuda:0`` in its worker (the one visible device); CPU jobs keep ``cpu`` (the slots then only
    bound the concurrency). Each worker's output goes to its job folder's ``worker.log``. A worker that dies
    without a result (e.g. killed by the OOM killer) is recorded as ``killed`` / ``failed`` so the others go on.

    Raises:
        KeyboardInterrupt: after forwarding it to the workers (they record ``killed``) and waiting for them.
    """
    queue = list(specs)
    slots = GpuSlots(gpu_ids)
    running: dict[str, tuple[subprocess.Popen, JobSpec, float, Any]] = {}
    bar = job_progress_bar(queue, f"jobs on {len(gpu_ids)} GPU(s)")
    try:
        while queue or running:
            while queue and (gpu_id := slots.take()) is not None:
                spec = queue.pop(0)
                running[gpu_id] = _start_worker(spec, gpu_id, slots=len(gpu_ids))
            time.sleep(poll_s)
            for gpu_id, (process, spec, started, log_file) in list(running.items()):
                if process.poll() is None:
                    continue
                log_file.close()
                del running[gpu_id]
                slots.give_back(gpu_id)
                _settle_worker(spec, process.returncode, started)
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        for process, *_ in running.values():
            process.send_signal(signal.SIGINT)
        for process, _, _, log_file in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log_file.close()
        raise
    finally:
        if bar is not None:
            bar.close()


def _start_worker(spec: JobSpec, gpu_id: str, *, slots: int) -> tuple[subprocess.Popen, JobSpec, float, Any]:
    log_path = rundir.worker_log_path(spec.run_dir, spec)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child = replace(spec, device="cuda:0" if spec.device.startswith("cuda") else spec.device, progress=False)
    log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed when the worker ends
    started = time.time()
    process = subprocess.Popen(
        worker_command(child),
        env=worker_env(gpu_id, slots=slots),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Its own session: a terminal Ctrl-C reaches the driver only, which forwards exactly one SIGINT (a second
        # one could cut the worker's `killed` record short); and a worker outlives a killed driver, holding its
        # job.lock, so that a resumed driver waits for it instead of starting a second writer.
        start_new_session=True,
    )
    log.info("%s fold %d started on GPU %s (pid %d)", spec.model, spec.fold, gpu_id, process.pid)
    return process, spec, started, log_file


def _settle_worker(spec: JobSpec, returncode: int, started: float) -> None:
    if returncode == 0:
        return
    where = rundir.worker_log_path(spec.run_dir, spec)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        status, reason = "killed", f"worker process was killed by {name} (out of host memory?); see {where}"
    else:
        status, reason = "failed", f"worker process exited with code {returncode}; see {where}"
    write_missing_result(spec, started, status, reason + "; continue with --resume")


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker process (``python -m segbench.executors SPEC``): run one job given as JSON."""
    fields = json.loads(argv[0])
    fields["imports"] = tuple(fields.get("imports", ()))
    spec = JobSpec(**fields)
    log_job_start(spec)

    # `kill` / the driver's forwarded Ctrl-C: checkpoint at the next step, record `killed`.
    install_interrupt_handlers()
    result = run_job(spec)
    log.info("%s fold %d ended: %s %s", spec.model, spec.fold, result.status, result.reason)
    return 0
