"""Resume-state probing: is a job finished, running somewhere, or lost? And recording a job that died silently.

Each submitted job's scheduler id is recorded in its job folder's ``submitit.json``. A resumed driver classifies every
unfinished job with :func:`job_state`: ``running`` (its scheduler job is still alive, or its ``job.lock`` is held)
jobs are waited for, never resubmitted; only ``lost`` ones are run again.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from segbench import results, rundir
from segbench.atomic import atomic_write_json
from segbench.errors import RunDirectoryError
from segbench.executors.slurm_queue import SlurmQueue
from segbench.job import JobSpec
from segbench.locking import RunLock, lock_held

log = logging.getLogger(__name__)

_RECORD_KEYS = {"backend", "job_id", "folder"}


def job_lock_held(folder: str | Path) -> bool:
    """Whether a live process holds the job folder's ``job.lock`` (see :func:`segbench.locking.lock_held`).

    Executors probe only jobs they did not start themselves (classification on resume, jobs run by another process):
    a job starting in the probe's instant would refuse to run.
    """
    return lock_held(Path(folder) / rundir.JOB_LOCK_FILE)


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The job's ``submitit.json`` (backend, job_id, folder, submission time), or ``None`` when absent or unreadable."""
    try:
        record = json.loads((Path(folder) / rundir.SUBMITIT_RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and _RECORD_KEYS <= record.keys() else None


def write_record(spec: JobSpec, record: dict[str, Any]) -> None:
    """Atomically write the job's ``submitit.json`` (creating its folder)."""
    path = rundir.submitit_record_path(spec.run_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def job_state(spec: JobSpec) -> Literal["finished", "running", "lost"]:
    """Classify one job of a run directory for a resuming driver.

    ``finished``: ``result.json`` exists and no process works on the job. ``running``: the scheduler job recorded in
    ``submitit.json`` is alive (Slurm: ``sacct``, else ``squeue``; submitit's local executor: its controller pid), or
    another process holds ``job.lock``. ``lost``: nothing works on it and it has no result: it must be (re)submitted.
    """
    folder = rundir.job_dir(spec.run_dir, spec)
    record = read_record(folder)
    if record is not None and recorded_job_alive(record):
        return "running"
    if job_lock_held(folder):
        return "running"
    return "finished" if rundir.result_path(spec.run_dir, spec).exists() else "lost"


def recorded_job_alive(record: dict[str, Any], *, queue: SlurmQueue | None = None) -> bool:
    """Whether the scheduler job of a ``submitit.json`` record is still alive.

    Slurm jobs are looked up in ``queue`` when it already knows them (one query for many jobs), else asked now;
    ``sacct`` is used when it answers, ``squeue`` otherwise (a cluster without accounting).
    """
    backend, job_id = record["backend"], str(record["job_id"])
    if backend == "local":
        return _submitit_controller_alive(int(job_id))
    if backend == "slurm":
        return _slurm_queue(job_id, queue).alive(job_id)
    return False  # debug jobs run inside the driver: they died with it


def recorded_job_state(record: dict[str, Any], *, queue: SlurmQueue | None = None) -> str:
    """The scheduler state of a record's job: Slurm's (``RUNNING``, ``CANCELLED``, …, ``GONE``), else ended/alive."""
    if record["backend"] == "slurm":
        job_id = str(record["job_id"])
        return _slurm_queue(job_id, queue).state(job_id)
    return "RUNNING" if recorded_job_alive(record) else "ENDED"


def _slurm_queue(job_id: str, queue: SlurmQueue | None) -> SlurmQueue:
    if queue is None or job_id not in queue.states:
        queue = queue or SlurmQueue()
        queue.refresh([job_id])
    return queue


def _submitit_controller_alive(pid: int) -> bool:
    # A pid can be reused after a reboot or a long time: only a process that is submitit's controller counts.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"submitit.local._local" in cmdline


def has_fresh_result(spec: JobSpec, since: float) -> bool:
    """Whether the job has a ``result.json`` written at or after ``since`` (a ``time.time()`` value)."""
    path = rundir.result_path(spec.run_dir, spec)
    return path.exists() and path.stat().st_mtime >= since


def write_missing_result(
    spec: JobSpec, since: float, status: str, reason: str, *, record: dict[str, Any] | None = None
) -> None:
    """Record ``status`` for a job whose process ended without writing a ``result.json`` newer than ``since``.

    ``record`` holds what the driver measured of the job itself (e.g. ``peak_rss_mb``) for its jobs.csv row.
    """
    if has_fresh_result(spec, since):
        return
    folder = rundir.job_dir(spec.run_dir, spec)
    try:
        what = f"segbench driver recording job {rundir.job_label(spec)}"
        with RunLock(folder, name=rundir.JOB_LOCK_FILE, what=what):
            result = results.JobResult.for_job(spec, status, reason, dict(record or {}), [])
            results.write_job_result(spec.run_dir, result)
    except RunDirectoryError:
        log.warning("%s fold %d is being run by another process; leaving it to that process", spec.model, spec.fold)


def wait_for_locks(specs: Sequence[JobSpec], poll_s: float) -> None:
    """Wait until no other process holds the job locks of ``specs`` (jobs this driver did not start)."""
    pending = list(specs)
    while pending:
        pending = [s for s in pending if job_lock_held(rundir.job_dir(s.run_dir, s))]
        if pending:
            time.sleep(poll_s)


def split_running(specs: Sequence[JobSpec]) -> tuple[list[JobSpec], list[JobSpec]]:
    """(to run, running elsewhere): a resumed driver never starts a second writer for a running job."""
    todo, running = [], []
    for spec in specs:
        (running if job_state(spec) == "running" else todo).append(spec)
    for spec in running:
        log.info(
            "%s fold %d is still running elsewhere; waiting for it instead of restarting it", spec.model, spec.fold
        )
    return todo, running
