"""``--executor slurm``: one submitit job per (model, fold), a Slurm job array with explicit limits.

A job that is preempted or reaches its time limit receives ``SIGUSR2`` (every process of the job does; DataLoader
workers ignore it). Its training loop saves a checkpoint at the next step boundary and stops; then submitit calls
:meth:`CheckpointableJob.checkpoint` and requeues it, and ``run_job`` continues from that checkpoint. ``SIGTERM``
(``scancel``, ``scontrol requeue``, pre-emption with a grace time) also checkpoints at the next step, then exits.
Submission goes through submitit's Python API only: no shell command is ever assembled from user strings, and the
one free-text option (the partition) is checked against Slurm's name rules. submitit's ``local`` and ``debug``
executors run the same code path on one machine (tests).

Each submitted job's id is recorded in its job folder's ``submitit.json``; a resumed driver re-attaches to jobs that
are still alive and submits only the lost ones (see :mod:`segbench.executors.state`). Job states come from
:class:`~segbench.executors.slurm_queue.SlurmQueue` (``sacct``, else ``squeue``). Logs go to ``RUN_DIR/slurm/``.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from segbench import rundir, stop
from segbench.data.sampling import preempt_signal
from segbench.errors import ConfigError
from segbench.executors.base import job_progress_bar, log_job_start, parse_device
from segbench.executors.slurm_queue import SlurmQueue
from segbench.executors.state import (
    has_fresh_result,
    job_lock_held,
    read_record,
    recorded_job_alive,
    recorded_job_state,
    wait_for_locks,
    write_missing_result,
    write_record,
)
from segbench.job import JobSpec, run_job

log = logging.getLogger(__name__)

Backend = Literal["slurm", "local", "debug"]
# Slurm partition names: letters, digits, '_', '-', '.', comma-separated lists. Anything else (spaces, quotes,
# newlines) could escape the #SBATCH line submitit writes, so it is refused instead of quoted.
_PARTITION = re.compile(r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]")
# How long before its time limit Slurm signals a job (SIGUSR2): time to stop and ask for a requeue.
_SIGNAL_DELAY_S = 120
# Slurm may send the time-limit signal up to a minute before the requested delay; below this limit it can arrive
# before the job's Python has installed the handler that turns it into a checkpoint and a requeue.
MIN_TIME_MIN = 2
# sbatch error text -> the flag that caused it (first match wins).
_REJECTIONS = (
    ("generic resource", "--slurm-gpus (the partition has no such GPUs; --slurm-gpus 0 for CPU jobs)"),
    ("more processors requested", "--slurm-cpus (more CPUs than a node of the partition has)"),
    ("memory specification", "--slurm-mem (more memory than a node of the partition has)"),
    ("time limit", "--slurm-time (longer than the partition allows)"),
    ("partition", "--slurm-partition (see `sinfo` for the partitions you may use)"),
    ("node configuration is not available", "--slurm-cpus, --slurm-gpus or --slurm-mem (no node has them all)"),
)


@dataclass(frozen=True)
class SlurmOptions:
    """Options of ``--executor slurm`` (every limit is explicit: Slurm defaults differ between clusters)."""

    partition: str | None = None  # None = the cluster's default partition
    time_min: int = 120  # wall-clock limit per job allocation; a job that reaches it is requeued and resumes
    gpus_per_job: int = 1  # 0 = CPU jobs; a job trains on one GPU, so more than 1 is refused
    cpus_per_job: int = 8  # data loading + the main process
    mem_gb: float | None = None  # None = the partition's default memory
    array_parallelism: int = 16  # jobs of the array running at the same time
    max_requeues: int = 3  # time-limit requeues per job before it is reported as `timeout`
    poll_s: float = 30.0  # how often the driver asks the scheduler (sacct, else squeue) about its jobs


class CheckpointableJob:
    """The callable submitit runs for one job: ``run_job(spec)``, requeued on preemption or time limit.

    It follows submitit's ``Checkpointable`` protocol (a ``checkpoint`` method returning a ``DelayedSubmission``)
    without subclassing it, so that this module imports without submitit. Its state is only the spec: progress lives
    in the job folder's checkpoints, which ``run_job`` resumes from.
    """

    def __init__(self, spec: JobSpec, attempt: int = 1) -> None:
        self.spec = spec
        self.attempt = attempt

    def __call__(self) -> dict[str, str]:
        log_job_start(self.spec, self.attempt)
        with _checkpoint_on_signals() as previous:
            try:
                result = run_job(self.spec)
            except stop.Preempted as exc:
                signum = exc.signum
            else:
                signum = None
            if signum is not None:
                # The checkpoint of the last finished step is saved, and leaving the `except` block freed the
                # training frames, so the DataLoader has shut its worker down. Now do what submitit would have done.
                gc.collect()
                log.info("%s stopped on %s", rundir.job_label(self.spec), signal.Signals(signum).name)
                handler = previous.get(signum)
                if signum != signal.SIGTERM and callable(handler):
                    handler(signum, None)  # checkpoint() + requeue + exit, or UncompletedJobError when it can't
                raise SystemExit(1)  # SIGTERM: Slurm is cancelling or requeueing the job itself
        log.info("%s ended: %s %s", rundir.job_label(self.spec), result.status, result.reason)
        return {"status": result.status, "reason": result.reason}

    def checkpoint(self) -> Any:
        """Called by submitit on SIGUSR2 (preemption / time limit): the submission that continues this job."""
        from submitit.helpers import DelayedSubmission

        log.info("%s: requeueing (attempt %d next)", rundir.job_label(self.spec), self.attempt + 1)
        return DelayedSubmission(CheckpointableJob(self.spec, self.attempt + 1))


@contextmanager
def _checkpoint_on_signals() -> Iterator[dict[int, Any]]:
    """Inside a submitit job: the pre-emption signal and SIGTERM stop training at the next step, after a checkpoint.

    Yields submitit's own handlers by signal number (the caller runs them once training has stopped). Outside
    training (setup, prediction), submitit's handler runs at once; a repeated signal is ignored. Outside a submitit job
    process (the ``debug`` backend runs jobs inside the driver) nothing is changed.
    """
    signums = (preempt_signal(), signal.SIGTERM)
    previous = {signum: signal.getsignal(signum) for signum in signums}
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        yield previous
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.request_stop(lambda: stop.Preempted(signum)):
            log.warning("caught %s: saving a checkpoint at the next training step", signal.Signals(signum).name)
            return
        if stop.stop_pending():  # the same signal again (Slurm and srun may both deliver it): already on its way
            return
        if callable(previous[signum]):
            previous[signum](signum, frame)

    for signum in signums:
        signal.signal(signum, handler)
    try:
        yield previous
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def slurm_parameters(options: SlurmOptions, *, run_name: str = "") -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords for ``options`` (one task, one node per job).

    The job array is named ``segbench-<run_name>`` (characters outside ``[A-Za-z0-9_.-]`` become ``_``), so that
    ``squeue`` tells the arrays of several runs apart; ``segbench`` when ``run_name`` is empty.

    Raises:
        ConfigError: a value Slurm would reject or that could not be written safely into the batch script.
    """
    if options.partition is not None and not _PARTITION.fullmatch(options.partition):
        raise ConfigError(
            f"--slurm-partition {options.partition!r} is not a Slurm partition name; use letters, digits, '_', '-', "
            "'.' (comma-separated for several)"
        )
    checks = (
        (
            options.time_min >= MIN_TIME_MIN,
            f"--slurm-time must be at least {MIN_TIME_MIN} minutes: Slurm may send its time-limit signal up to a "
            "minute early, before the job can checkpoint and requeue",
        ),
        (options.poll_s > 0, "--slurm-poll must be positive (seconds)"),
        (options.gpus_per_job >= 0, "--slurm-gpus must be 0 or 1"),
        (
            options.gpus_per_job <= 1,
            f"--slurm-gpus {options.gpus_per_job}: a segbench job trains on one GPU, so every further GPU of each job "
            "would sit idle; use --slurm-gpus 1 (Slurm runs one array task per GPU, --slurm-array-parallelism caps "
            "how many at once)",
        ),
        (options.cpus_per_job >= 1, "--slurm-cpus must be at least 1"),
        (options.mem_gb is None or options.mem_gb > 0, "--slurm-mem must be positive (GB)"),
        (options.array_parallelism >= 1, "--slurm-array-parallelism must be at least 1"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    params: dict[str, Any] = {
        "job_name": "-".join(filter(None, ("segbench", _UNSAFE_NAME.sub("_", run_name)))),
        "time": int(options.time_min),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": int(options.cpus_per_job),
        "array_parallelism": int(options.array_parallelism),
        "signal_delay_s": min(_SIGNAL_DELAY_S, max(30, options.time_min * 60 // 10)),
        "stderr_to_stdout": False,
        # Slurm 22.05-23.02 no longer passes the job's --cpus-per-task to srun steps: without this the srun step
        # that runs the job is bound to one CPU, and its loader workers and threads share it.
        "setup": [f"export SRUN_CPUS_PER_TASK={int(options.cpus_per_job)}"],
    }
    if options.gpus_per_job:
        params["gpus_per_node"] = int(options.gpus_per_job)
    if options.partition is not None:
        params["partition"] = options.partition
    if options.mem_gb is not None:
        # Whole GB as "16GB", fractions in MB: Slurm's --mem takes integers only.
        mem_mb = round(options.mem_gb * 1024)
        params["mem"] = f"{mem_mb // 1024}GB" if mem_mb % 1024 == 0 else f"{mem_mb}MB"
    return params


def check_slurm_device(device: str, options: SlurmOptions) -> str:
    """Check ``--device`` against what each Slurm job allocates, on the login node, before any work; returns it.

    The login node has no GPU to ask, but the request itself can be checked: a job sees exactly its
    ``--slurm-gpus G`` GPUs as ``cuda:0 … cuda:G-1``. ``auto`` becomes ``cuda`` with GPUs and ``cpu`` without, where
    the job runs. A CPU device with GPUs allocated is allowed (a warning: each job holds GPUs it never uses).

    Raises:
        ConfigError: a malformed device, a CUDA device with ``--slurm-gpus 0``, or ``cuda:N`` with ``N >= G``.
    """
    if device == "auto":
        return device
    parsed = parse_device(device)
    gpus = int(options.gpus_per_job)
    if parsed.type == "cuda" and gpus == 0:
        raise ConfigError(
            f"--device {device} needs a GPU in every Slurm job, but --slurm-gpus is 0; add --slurm-gpus 1 (or more), "
            "or use --device cpu"
        )
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= gpus:
        raise ConfigError(
            f"--device {device}: each Slurm job sees only its own {gpus} GPU(s), as cuda:0 … cuda:{gpus - 1}; use "
            f"--device cuda (or raise --slurm-gpus)"
        )
    if parsed.type == "cpu" and gpus:
        log.warning("--device cpu with --slurm-gpus %d: every Slurm job holds GPUs it never uses; add --slurm-gpus 0",
                    gpus)  # fmt: skip
    return device


@dataclass(frozen=True, eq=False)
class Tracked:
    """A job a driver waits for: ``is_active()`` asks the scheduler; ``job`` is set when this driver submitted it."""

    spec: JobSpec
    is_active: Callable[[], bool]
    job: Any = None  # the submitit Job; None when re-attached to a job of an earlier driver
    since: float = 0.0  # submission time: a result.json older than this is from an earlier attempt
    record: dict[str, Any] | None = None  # the submitit.json of a re-attached job
    job_id: str = ""  # the scheduler's id ("5_0" for a task of a Slurm array)


class SubmititExecutor:
    """Run jobs through submitit: ``slurm`` (a job array), or submitit's ``local`` / ``debug`` executors.

    Records every submitted job id in ``jobs/<model>/fold_<k>/submitit.json``; on resume it waits for jobs that are
    still alive and submits only the lost ones. Logs go to ``RUN_DIR/slurm/``.

    Raises:
        ConfigError: submitit is not installed, or (slurm) no Slurm client (``srun``) is on PATH.
    """

    def __init__(self, backend: Backend = "slurm", options: SlurmOptions = SlurmOptions()) -> None:
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--executor slurm needs the submitit package; install it with pip install 'segbench[slurm]'"
            ) from None
        if backend == "slurm":
            slurm_parameters(options)  # validate before any preflight or training
            if shutil.which("srun") is None:
                raise ConfigError(
                    "--executor slurm needs Slurm's srun/sbatch on PATH; run segbench on a cluster login node, "
                    "or use --executor local"
                )
        elif backend not in ("local", "debug"):
            raise ValueError(f"unknown submitit backend {backend!r}")
        self.backend = backend
        self.options = options
        self.queue = SlurmQueue()

    @property
    def resolves_device(self) -> bool:
        """True for Slurm: the driver's machine (a login node) says nothing about the GPUs jobs will get."""
        return self.backend == "slurm"

    def check_device(self, device: str) -> str:
        """``--device`` checked against the GPUs each job allocates (:func:`check_slurm_device`); returned unchanged.

        Raises:
            ConfigError: a device no job of this executor can have.
        """
        return check_slurm_device(device, self.options) if self.backend == "slurm" else device

    def __call__(self, specs: list[JobSpec]) -> None:
        """Submit the lost jobs of ``specs``, re-attach to the running ones, and wait for all of them."""
        tracked, to_submit, lock_only = [], [], []
        records = {spec: read_record(rundir.job_dir(spec.run_dir, spec)) for spec in specs}
        self.queue.refresh(str(r["job_id"]) for r in records.values() if r is not None and r["backend"] == "slurm")
        for spec, record in records.items():
            if record is not None and recorded_job_alive(record, queue=self.queue):
                log.info("%s: re-attaching to %s job %s", rundir.job_label(spec), record["backend"], record["job_id"])
                since = float(record.get("submitted_at_s", time.time()))
                alive = self._is_active(str(record["job_id"]), lambda r=record: recorded_job_alive(r))
                tracked.append(Tracked(spec, alive, since=since, record=record, job_id=str(record["job_id"])))
            elif job_lock_held(rundir.job_dir(spec.run_dir, spec)):
                lock_only.append(spec)
            else:
                to_submit.append(spec)
        tracked += self.submit(to_submit)
        self.wait(tracked, lock_only=lock_only)

    def submit(self, specs: list[JobSpec]) -> list[Tracked]:
        """Submit one job per spec (a job array on Slurm) and record its id in the job folder's ``submitit.json``.

        Raises:
            ConfigError: Slurm refused the submission (the message names the ``--slurm-*`` flag to change).
        """
        if not specs:
            return []
        folder = rundir.submitit_dir(specs[0].run_dir).absolute()
        executor = self._executor(folder)
        since = time.time()
        runnables = [CheckpointableJob(replace(s, device=self._job_device(s), progress=False)) for s in specs]
        jobs = _submit_all(executor, runnables, run_dir=specs[0].run_dir)
        tracked = []
        for spec, job in zip(specs, jobs, strict=True):
            record = {
                "backend": self.backend,
                "job_id": str(job.job_id),
                "folder": str(folder),
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(since)),
                "submitted_at_s": since,
            }
            write_record(spec, record)
            log.info("%s submitted as %s job %s", rundir.job_label(spec), self.backend, job.job_id)
            alive = self._is_active(str(job.job_id), lambda j=job: not j.done())
            tracked.append(Tracked(spec, alive, job, since, job_id=str(job.job_id)))
        return tracked

    def _is_active(self, job_id: str, otherwise: Callable[[], bool]) -> Callable[[], bool]:
        """Slurm: the queue's state of ``job_id`` (refreshed once per poll); other backends: ``otherwise``."""
        if self.backend == "slurm":
            return lambda: self.queue.alive(job_id)
        return otherwise

    def wait(self, tracked: Sequence[Tracked], *, lock_only: Sequence[JobSpec] = ()) -> None:
        """Wait until every tracked job has ended (and every job in ``lock_only`` has released its lock).

        A job that ended without a fresh ``result.json`` gets ``killed`` or ``timeout`` at once, with a log line.

        Raises:
            KeyboardInterrupt: the scheduler jobs are left running; ``segbench run --resume`` re-attaches to them.
        """
        poll_s = self.options.poll_s if self.backend == "slurm" else 0.5
        pending = list(tracked)
        bar = job_progress_bar([item.spec for item in pending], f"{self.backend} jobs")
        try:
            while pending:
                if self.backend == "slurm":
                    self.queue.refresh(item.job_id for item in pending)
                still = [item for item in pending if item.is_active()]
                for item in pending:
                    if item not in still:
                        self._settle(item)
                        if bar is not None:
                            bar.update(1)
                pending = still
                if pending:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            log.warning("driver interrupted; submitted jobs keep running; `segbench run --resume` re-attaches")
            raise
        finally:
            if bar is not None:
                bar.close()
        wait_for_locks(lock_only, poll_s)

    def _executor(self, folder: Path) -> Any:
        import submitit

        if self.backend == "debug":
            return submitit.DebugExecutor(folder=folder)
        if self.backend == "local":
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
            executor.update_parameters(timeout_min=self.options.time_min, signal_delay_s=_SIGNAL_DELAY_S)
            return executor
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
        executor.update_parameters(**slurm_parameters(self.options, run_name=folder.parent.name))
        return executor

    def _job_device(self, spec: JobSpec) -> str:
        if self.backend != "slurm":
            return spec.device
        # The driver (login node) has no GPU to detect: the job runs where Slurm puts it, on what it allocated.
        if spec.device == "auto":
            return "cuda" if self.options.gpus_per_job else "cpu"
        return spec.device

    def _settle(self, item: Tracked) -> None:
        """Give a job that ended without a fresh ``result.json`` a status naming its scheduler state and log."""
        spec = item.spec
        if has_fresh_result(spec, item.since):
            return
        if self.backend == "slurm":
            state = self.queue.state(item.job_id)
        elif item.record is not None:
            state = recorded_job_state(item.record)
        else:
            state = str(item.job.state)
        error = _job_error(item.job) if item.job is not None else ""
        timed_out = "TIMEOUT" in state.upper() or "timed-out" in error
        what = "reached its time limit too many times" if timed_out else f"ended ({_describe(state)})"
        where = item.job.paths.stderr if item.job is not None else f"its log in {(item.record or {}).get('folder')}"
        reason = f"{self.backend} job {item.job_id} {what} without a result; see {where}; continue with --resume"
        status = "timeout" if timed_out else "killed"
        log.warning("%s: %s — %s", rundir.job_label(spec), status, reason)
        write_missing_result(spec, item.since, status, reason)


def _describe(state: str) -> str:
    if state == "GONE":
        return "no longer known to Slurm, and no accounting record"
    return state


def _job_error(job: Any) -> str:
    """The error submitit recorded for a job (its result pickle), or ``""``; never waits for the job."""
    path = Path(job.paths.result_pickle)
    if not path.exists():
        return ""
    try:
        from submitit.core.utils import pickle_load

        outcome, payload = pickle_load(path)
    except Exception as exc:  # noqa: BLE001 - only used to word the reason
        return str(exc)
    return str(payload) if outcome == "error" else ""


def _submit_all(executor: Any, runnables: list[CheckpointableJob], *, run_dir: str) -> list[Any]:
    """Submit ``runnables`` as one batch (a Slurm job array); a refusal by sbatch becomes one sentence.

    Raises:
        ConfigError: sbatch refused the jobs (names the ``--slurm-*`` flag to change).
    """
    from submitit.core.utils import FailedJobError

    try:
        with executor.batch():
            return [executor.submit(runnable) for runnable in runnables]
    except FailedJobError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()] or [str(exc).strip()]
        message = lines[-1].removeprefix("sbatch: error: ")
        flag = next((flag for key, flag in _REJECTIONS if key in message.lower()), "the --slurm-* options")
        raise ConfigError(
            f"Slurm refused the jobs ({message}); change {flag}, then continue with "
            f"`segbench run --resume --out {run_dir}`"
        ) from None
