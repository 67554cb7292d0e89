"""How the (model × fold) jobs of a run are executed: locally (in-process or one job per GPU) or through submitit.

Every executor is a callable ``executor(specs) -> None`` that runs :func:`segbench.job.run_job` once per
:class:`~segbench.job.JobSpec`; the job itself reads everything from the run directory, resumes from its own latest
checkpoint and writes ``result.json`` last, so executors only decide *where* and *when* a job runs:

- :class:`LocalExecutor` (``--executor local``): in this process on the CPU or one GPU; with several GPUs, one
  worker process per GPU (``python -m segbench.executors``) that sees exactly one device through
  ``CUDA_VISIBLE_DEVICES`` and runs on ``cuda:0``.
- :class:`SubmititExecutor` (``--executor slurm``): one submitit job per (model, fold), a Slurm job array with
  explicit limits (time, GPUs, CPUs, memory). A job that is preempted or reaches its time limit receives
  ``SIGUSR2``; submitit then calls :meth:`CheckpointableJob.checkpoint` and requeues it, and ``run_job`` continues
  from the job's latest checkpoint. Submission goes through submitit's Python API only: no shell command is ever
  assembled from user strings, and the one free-text option (the partition) is checked against Slurm's name rules.

Resume after the driver died: each submitted job's id is recorded in ``jobs/<model>/fold_<k>/submitit.json``. A
resumed driver classifies every unfinished job with :func:`job_state`: ``running`` (its scheduler job is still alive,
or its ``job.lock`` is held) jobs are waited for, never resubmitted; only ``lost`` ones are submitted again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from segbench import results
from segbench.atomic import atomic_write_json
from segbench.errors import ConfigError, RunDirectoryError
from segbench.job import JOB_LOCK_FILE, JobSpec
from segbench.locking import RunLock

log = logging.getLogger(__name__)

EXECUTOR_NAMES = ("local", "slurm")
RECORD_FILE = "submitit.json"  # per job folder: which scheduler job runs it (written by the driver, atomically)
WORKER_LOG = "worker.log"  # per job folder: stdout/stderr of a local GPU worker process
SUBMITIT_FOLDER = "slurm"  # RUN_DIR/slurm: submitit's pickles and the per-job logs
Backend = Literal["slurm", "local", "debug"]
# Slurm partition names: letters, digits, '_', '-', '.', comma-separated lists. Anything else (spaces, quotes,
# newlines) could escape the #SBATCH line submitit writes, so it is refused instead of quoted.
_PARTITION = re.compile(r"[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*")
# How long before its time limit Slurm signals a job (SIGUSR2): time to stop and ask for a requeue.
_SIGNAL_DELAY_S = 120


@dataclass(frozen=True)
class LocalOptions:
    """Options of ``--executor local``."""

    gpus: tuple[str, ...] | None = None  # CUDA_VISIBLE_DEVICES ids, one concurrent job each; None = all visible
    poll_s: float = 0.5  # how often the driver checks its worker processes


@dataclass(frozen=True)
class SlurmOptions:
    """Options of ``--executor slurm`` (every limit is explicit: Slurm defaults differ between clusters)."""

    partition: str | None = None  # None = the cluster's default partition
    time_min: int = 120  # wall-clock limit per job allocation; a job that reaches it is requeued and resumes
    gpus_per_job: int = 1  # 0 = CPU jobs
    cpus_per_job: int = 8  # data loading + the main process
    mem_gb: float | None = None  # None = the partition's default memory
    array_parallelism: int = 16  # jobs of the array running at the same time
    max_requeues: int = 3  # time-limit requeues per job before it is reported as `timeout`
    poll_s: float = 30.0  # how often the driver asks the scheduler (sacct) about its jobs


def make_executor(name: str, *, options: LocalOptions | SlurmOptions | None = None) -> Callable[[list[JobSpec]], None]:
    """The executor behind ``--executor NAME``.

    Raises:
        ConfigError: unknown name, options of the other executor, or (slurm) submitit / Slurm unavailable.
    """
    if name == "local":
        if options is not None and not isinstance(options, LocalOptions):
            raise ConfigError("Slurm options (--slurm-*) need --executor slurm")
        return LocalExecutor(options or LocalOptions())
    if name == "slurm":
        if options is not None and not isinstance(options, SlurmOptions):
            raise ConfigError("--gpus applies to --executor local; use --slurm-gpus for GPUs per Slurm job")
        return SubmititExecutor("slurm", options or SlurmOptions())
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTOR_NAMES)} (got {name!r})")


# --- job states (resume) ---------------------------------------------------------------------------------------


def job_lock_held(folder: str | Path) -> bool:
    """Whether a live process holds the job folder's ``job.lock`` (a non-blocking ``flock`` probe).

    The probe holds the lock for an instant; a job starting in exactly that instant would refuse to run, so executors
    probe only jobs they did not start themselves (classification on resume, jobs run by another process).
    """
    path = Path(folder) / JOB_LOCK_FILE
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; never creates the file
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def read_record(folder: str | Path) -> dict[str, Any] | None:
    """The job's ``submitit.json`` (backend, job_id, folder, submission time), or ``None`` when absent or unreadable."""
    try:
        record = json.loads((Path(folder) / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"backend", "job_id", "folder"} <= record.keys() else None


def job_state(spec: JobSpec) -> Literal["finished", "running", "lost"]:
    """Classify one job of a run directory for a resuming driver.

    ``finished``: ``result.json`` exists and no process works on the job. ``running``: the scheduler job recorded in
    ``submitit.json`` is alive (Slurm: ``sacct``; submitit's local executor: its controller pid), or another process
    holds ``job.lock``. ``lost``: nothing works on it and it has no result: it must be (re)submitted.
    """
    folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
    record = read_record(folder)
    if record is not None and _recorded_job_alive(record):
        return "running"
    if job_lock_held(folder):
        return "running"
    return "finished" if (folder / results.RESULT_FILE).exists() else "lost"


def _recorded_job_alive(record: dict[str, Any]) -> bool:
    backend, job_id = record["backend"], str(record["job_id"])
    if backend == "local":
        return _submitit_controller_alive(int(job_id))
    if backend == "slurm":
        import submitit

        return not submitit.SlurmJob(folder=record["folder"], job_id=job_id).done(force_check=True)
    return False  # debug jobs run inside the driver: they died with it


def _submitit_controller_alive(pid: int) -> bool:
    # A pid can be reused after a reboot or a long time: only a process that is submitit's controller counts.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return b"submitit.local._local" in cmdline


def _write_missing_result(spec: JobSpec, since: float, status: str, reason: str) -> None:
    """Record ``status`` for a job whose process ended without writing a ``result.json`` newer than ``since``."""
    folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
    path = folder / results.RESULT_FILE
    if path.exists() and path.stat().st_mtime >= since:
        return
    try:
        with RunLock(folder, name=JOB_LOCK_FILE, what=f"segbench driver recording job {spec.model} fold {spec.fold}"):
            results.write_job_result(spec.run_dir, results.JobResult(spec.model, spec.fold, status, reason, {}, []))
    except RunDirectoryError:
        log.warning("%s fold %d is being run by another process; leaving it to that process", spec.model, spec.fold)


def _wait_for_locks(specs: Sequence[JobSpec], poll_s: float) -> None:
    """Wait until no other process holds the job locks of ``specs`` (jobs this driver did not start)."""
    pending = list(specs)
    while pending:
        pending = [s for s in pending if job_lock_held(results.job_dir(s.run_dir, s.model, s.fold))]
        if pending:
            time.sleep(poll_s)


def _split_running(specs: Sequence[JobSpec]) -> tuple[list[JobSpec], list[JobSpec]]:
    """(to run, running elsewhere): a resumed driver never starts a second writer for a running job."""
    todo, running = [], []
    for spec in specs:
        (running if job_state(spec) == "running" else todo).append(spec)
    for spec in running:
        log.info(
            "%s fold %d is still running elsewhere; waiting for it instead of restarting it", spec.model, spec.fold
        )
    return todo, running


# --- local: in-process or one worker process per GPU ------------------------------------------------------------


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

    def __init__(self, options: LocalOptions = LocalOptions()) -> None:
        self.options = options

    def __call__(self, specs: list[JobSpec]) -> None:
        todo, running = _split_running(specs)
        gpu_ids = self.options.gpus
        on_gpu = bool(specs) and specs[0].device == "cuda"  # "cuda:N" names one device: the user chose it
        if gpu_ids is None and on_gpu:
            gpu_ids = visible_gpu_ids()
        if gpu_ids is not None and (len(gpu_ids) > 1 or self.options.gpus is not None):
            run_on_gpus(todo, gpu_ids, poll_s=self.options.poll_s)
        else:
            from segbench.runner import run_in_process

            run_in_process(todo)
        _wait_for_locks(running, self.options.poll_s)


def run_on_gpus(specs: Sequence[JobSpec], gpu_ids: Sequence[str], *, poll_s: float = 0.5) -> None:
    """Run ``specs`` as worker processes, at most one per GPU at a time, each seeing only its GPU.

    A CUDA job runs on ``cuda:0`` in its worker (the one visible device); CPU jobs keep ``cpu`` (the slots then only
    bound the concurrency). Each worker's output goes to ``jobs/<model>/fold_<k>/worker.log``. A worker that dies
    without a result (e.g. killed by the OOM killer) is recorded as ``killed`` / ``failed`` so the others go on.

    Raises:
        KeyboardInterrupt: after forwarding it to the workers (they record ``killed``) and waiting for them.
    """
    queue = list(specs)
    slots = GpuSlots(gpu_ids)
    running: dict[str, tuple[subprocess.Popen, JobSpec, float, Any]] = {}
    bar = None
    if queue and queue[0].progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queue), desc=f"jobs on {len(gpu_ids)} GPU(s)", unit="job")
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
    folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
    folder.mkdir(parents=True, exist_ok=True)
    child = replace(spec, device="cuda:0" if spec.device.startswith("cuda") else spec.device, progress=False)
    log_file = open(folder / WORKER_LOG, "a", encoding="utf-8")  # noqa: SIM115 - closed when the worker ends
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
    where = results.job_dir(spec.run_dir, spec.model, spec.fold) / WORKER_LOG
    if returncode < 0:
        name = signal.Signals(-returncode).name
        status, reason = "killed", f"worker process was killed by {name} (out of host memory?); see {where}"
    else:
        status, reason = "failed", f"worker process exited with code {returncode}; see {where}"
    _write_missing_result(spec, started, status, reason + "; continue with --resume")


def _worker_main(argv: Sequence[str]) -> int:
    """Entry point of a worker process: run one job given as JSON, report the device it sees."""
    from segbench.job import run_job

    spec = JobSpec(**json.loads(argv[0]))
    _log_job_start(spec)

    def interrupt(signum, frame):  # noqa: ARG001 - `kill` / the driver: record `killed`, like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    result = run_job(spec)
    log.info("%s fold %d ended: %s %s", spec.model, spec.fold, result.status, result.reason)
    return 0


def _log_job_start(spec: JobSpec, attempt: int | None = None) -> None:
    if not logging.getLogger().handlers:  # job logs (resume, statuses) belong in the worker / Slurm log
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    suffix = f", attempt {attempt}" if attempt is not None else ""
    log.info(
        "segbench job %s fold %d on %s, CUDA_VISIBLE_DEVICES=%s, pid %d%s",
        spec.model,
        spec.fold,
        spec.device,
        visible,
        os.getpid(),
        suffix,
    )


# --- submitit (Slurm; its local and debug executors for tests) --------------------------------------------------


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
        from segbench.job import run_job

        _log_job_start(self.spec, self.attempt)
        result = run_job(self.spec)
        log.info("%s fold %d ended: %s %s", self.spec.model, self.spec.fold, result.status, result.reason)
        return {"status": result.status, "reason": result.reason}

    def checkpoint(self) -> Any:
        """Called by submitit on SIGUSR2 (preemption / time limit): the submission that continues this job."""
        from submitit.helpers import DelayedSubmission

        log.info("%s fold %d: requeueing (attempt %d next)", self.spec.model, self.spec.fold, self.attempt + 1)
        return DelayedSubmission(CheckpointableJob(self.spec, self.attempt + 1))


def slurm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """``SlurmExecutor.update_parameters`` keywords for ``options`` (one task, one node per job).

    Raises:
        ConfigError: a value Slurm would reject or that could not be written safely into the batch script.
    """
    if options.partition is not None and not _PARTITION.fullmatch(options.partition):
        raise ConfigError(
            f"--slurm-partition {options.partition!r} is not a Slurm partition name; use letters, digits, '_', '-', "
            "'.' (comma-separated for several)"
        )
    checks = (
        (options.time_min >= 1, "--slurm-time must be at least 1 minute"),
        (options.gpus_per_job >= 0, "--slurm-gpus must be 0 or more"),
        (options.cpus_per_job >= 1, "--slurm-cpus must be at least 1"),
        (options.mem_gb is None or options.mem_gb > 0, "--slurm-mem must be positive (GB)"),
        (options.array_parallelism >= 1, "--slurm-array-parallelism must be at least 1"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    params: dict[str, Any] = {
        "job_name": "segbench",
        "time": int(options.time_min),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": int(options.cpus_per_job),
        "array_parallelism": int(options.array_parallelism),
        "signal_delay_s": min(_SIGNAL_DELAY_S, max(30, options.time_min * 60 // 10)),
        "stderr_to_stdout": False,
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


@dataclass(frozen=True, eq=False)
class Tracked:
    """A job a driver waits for: ``is_active()`` asks the scheduler; ``job`` is set when this driver submitted it."""

    spec: JobSpec
    is_active: Callable[[], bool]
    job: Any = None  # the submitit Job; None when re-attached to a job of an earlier driver
    since: float = 0.0  # submission time: a result.json older than this is from an earlier attempt
    record: dict[str, Any] | None = None  # the submitit.json of a re-attached job


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

    @property
    def resolves_device(self) -> bool:
        """True for Slurm: the driver's machine (a login node) says nothing about the GPUs jobs will get."""
        return self.backend == "slurm"

    def __call__(self, specs: list[JobSpec]) -> None:
        """Submit the lost jobs of ``specs``, re-attach to the running ones, and wait for all of them."""
        tracked, to_submit, lock_only = [], [], []
        for spec in specs:
            job_folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
            record = read_record(job_folder)
            if record is not None and _recorded_job_alive(record):
                log.info(
                    "%s fold %d: re-attaching to %s job %s", spec.model, spec.fold, record["backend"], record["job_id"]
                )
                since = float(record.get("submitted_at_s", time.time()))
                tracked.append(Tracked(spec, lambda r=record: _recorded_job_alive(r), since=since, record=record))
            elif job_lock_held(job_folder):
                lock_only.append(spec)
            else:
                to_submit.append(spec)
        tracked += self.submit(to_submit)
        self.wait(tracked, lock_only=lock_only)

    def submit(self, specs: list[JobSpec]) -> list[Tracked]:
        """Submit one job per spec (a job array on Slurm) and record its id in the job folder's ``submitit.json``."""
        if not specs:
            return []
        folder = (Path(specs[0].run_dir) / SUBMITIT_FOLDER).absolute()
        executor = self._executor(folder)
        since = time.time()
        runnables = [CheckpointableJob(replace(s, device=self._job_device(s), progress=False)) for s in specs]
        with executor.batch():
            jobs = [executor.submit(runnable) for runnable in runnables]
        tracked = []
        for spec, job in zip(specs, jobs, strict=True):
            record = {
                "backend": self.backend,
                "job_id": str(job.job_id),
                "folder": str(folder),
                "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(since)),
                "submitted_at_s": since,
            }
            job_folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
            job_folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(job_folder / RECORD_FILE, record)
            log.info("%s fold %d submitted as %s job %s", spec.model, spec.fold, self.backend, job.job_id)
            tracked.append(Tracked(spec, lambda j=job: not j.done(), job, since))
        return tracked

    def wait(self, tracked: Sequence[Tracked], *, lock_only: Sequence[JobSpec] = ()) -> None:
        """Wait until every tracked job has ended (and every job in ``lock_only`` has released its lock).

        A job this driver submitted that ended without a fresh ``result.json`` gets ``killed`` or ``timeout``.

        Raises:
            KeyboardInterrupt: the scheduler jobs are left running; ``segbench run --resume`` re-attaches to them.
        """
        poll_s = self.options.poll_s if self.backend == "slurm" else 0.5
        pending = list(tracked)
        bar = None
        if pending and pending[0].spec.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(pending), desc=f"{self.backend} jobs", unit="job")
        try:
            while pending:
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
        _wait_for_locks(lock_only, poll_s)

    def _executor(self, folder: Path) -> Any:
        import submitit

        if self.backend == "debug":
            return submitit.DebugExecutor(folder=folder)
        if self.backend == "local":
            executor = submitit.LocalExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
            executor.update_parameters(timeout_min=self.options.time_min, signal_delay_s=_SIGNAL_DELAY_S)
            return executor
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=self.options.max_requeues)
        executor.update_parameters(**slurm_parameters(self.options))
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
        spec, job, since = item.spec, item.job, item.since
        path = results.job_dir(spec.run_dir, spec.model, spec.fold) / results.RESULT_FILE
        if path.exists() and path.stat().st_mtime >= since:
            return
        if job is None:  # re-attached to an earlier driver's job: only its record is known
            record = item.record or {}
            reason = (
                f"{record.get('backend')} job {record.get('job_id')} ended without a result; see its log in "
                f"{record.get('folder')}; continue with --resume"
            )
            _write_missing_result(spec, since, "killed", reason)
            return
        state = str(job.state)
        try:
            error = str(job.exception() or "")
        except Exception as exc:  # noqa: BLE001 - only used to word the reason
            error = str(exc)
        timed_out = "TIMEOUT" in state.upper() or "timed-out" in error
        what = "reached its time limit too many times" if timed_out else f"ended ({state})"
        reason = (
            f"{self.backend} job {job.job_id} {what} without a result; see {job.paths.stderr}; continue with --resume"
        )
        _write_missing_result(spec, since, "timeout" if timed_out else "killed", reason)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
