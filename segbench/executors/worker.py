"""One job in a fresh child process: its command line and environment, its output, and what its death means.

The child is started with ``subprocess`` (never a fork of the driver, whose torch threads and CUDA context must not be
copied), as ``python -m segbench.executors SPEC_JSON SYS_PATH_JSON``. It sees the driver's ``sys.path``, and the job
imports the modules of :attr:`JobSpec.imports` first, so models and metrics registered by the user's modules exist.

A child that ends without writing a ``result.json`` (segfault, ``os.abort()``, the kernel's OOM killer, ``kill -9``)
gets one from the driver (:func:`settle`), with a status and a reason naming the signal and the job's ``worker.log``.
"""

from __future__ import annotations

import codecs
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import psutil

from segbench import progress, rundir
from segbench.allocator import keep_freed_memory
from segbench.callbacks import TreeMemory
from segbench.executors.base import log_job_start
from segbench.executors.state import write_missing_result
from segbench.executors.zygote import Zygote
from segbench.job import JobSpec, run_job
from segbench.profiling import allocated_cpus
from segbench.stop import install_interrupt_handlers

log = logging.getLogger(__name__)

# Signals that mean "stopped from outside" (status killed) rather than "crashed" (status failed).
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def worker_command(spec: JobSpec) -> list[str]:
    """Argument list (no shell) of the child process that runs one job: ``python -m segbench.executors SPEC PATH``."""
    return [sys.executable, "-m", "segbench.executors", *worker_args(spec)]


def worker_args(spec: JobSpec) -> list[str]:
    """The arguments of :func:`worker_main` for one job: the spec and this process's ``sys.path``, as JSON."""
    return [json.dumps(asdict(spec)), json.dumps(sys.path)]


def worker_env(gpu_id: str | None, *, slots: int) -> dict[str, str]:
    """Environment of a child: exactly one visible GPU (``None``: CPU job, unchanged), a share of the CPU threads.

    The folder holding this ``segbench`` package comes first on ``PYTHONPATH``, so the child runs the driver's code.
    """
    env = dict(os.environ)
    if gpu_id is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu_id
    if slots > 1:  # N children each defaulting to every core would oversubscribe the CPU (and starve the GPUs)
        # The CPUs allotted to this process (Slurm, taskset), not the machine's: a 16-CPU job on a 128-core node.
        env.setdefault("OMP_NUM_THREADS", str(max(1, allocated_cpus() // slots)))
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
    return env


class Child:
    """A running job process: its spec, its ``worker.log``, its start time and the peak RSS of its process tree.

    Args:
        spec: the job as the child runs it (device already mapped to the child's view).
        gpu_id: ``CUDA_VISIBLE_DEVICES`` of the child, ``None`` for a CPU job.
        slots: how many children run at the same time (CPU thread share).
        echo: forward the child's output (progress bars, warnings) to this process's stderr besides ``worker.log``.
        zygote: fork the child from this pre-imported process (:mod:`~segbench.executors.zygote`) instead of starting
            a new interpreter; CPU jobs only (a CUDA job always starts afresh), and a zygote that no longer runs or
            refuses to fork falls back to the latter.
    """

    def __init__(
        self, spec: JobSpec, gpu_id: str | None, *, slots: int, echo: bool, zygote: Zygote | None = None
    ) -> None:
        self.spec = spec
        self.log_path = rundir.worker_log_path(spec.run_dir, spec)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in finish()
        self.started = time.time()
        self.oom_kills_at_start = oom_kill_count()
        forked = None
        # Never a CUDA job: a child forked from the zygote inherits its process state, and CUDA does not survive a fork.
        if zygote is not None and not spec.device.startswith("cuda"):
            forked = zygote.spawn(worker_args(spec), output_fd=None if echo else self._log.fileno())
        self.process = forked or subprocess.Popen(
            worker_command(spec),
            env=worker_env(gpu_id, slots=slots),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if echo else self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal Ctrl-C reaches the driver only, which forwards exactly one SIGINT (a second
            # one could cut the child's `killed` record short); and a child outlives a killed driver, holding its
            # job.lock, so that a resumed driver waits for it instead of starting a second writer.
            start_new_session=True,
        )
        self._tee = None
        if echo:
            self._tee = threading.Thread(target=_tee, args=(self.process.stdout, self._log), daemon=True)
            self._tee.start()
        self._tree = TreeMemory(psutil.Process(self.process.pid))

    @property
    def peak_rss_bytes(self) -> int:
        """Peak memory of the child's process tree as this driver sampled it (:class:`TreeMemory`)."""
        return self._tree.peak_bytes

    def poll(self) -> int | None:
        """The exit code once the child has ended, else ``None`` (after sampling its process tree's RSS)."""
        returncode = self.process.poll()
        if returncode is None:
            self._tree.sample()
        return returncode

    def finish(self) -> None:
        """Close the log (after the forwarded output is drained)."""
        if self._tee is not None:
            self._tee.join(timeout=5)
        self._log.close()


def _tee(stream: IO[bytes], log_file: IO[bytes]) -> None:
    """Copy a child's output to its log and, decoded, to this process's stderr (tqdm's ``\\r`` updates included)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(stream.fileno(), 65536):
        log_file.write(chunk)
        log_file.flush()
        try:
            sys.stderr.write(decoder.decode(chunk))
            sys.stderr.flush()
        except (OSError, ValueError):  # the driver's stderr went away: the log still gets everything
            pass
    stream.close()


def oom_kill_count() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's cgroup (v2) so far, if readable.

    ``memory.events`` counts kills in the cgroup and below it, whether the cgroup's own limit or the whole machine ran
    out; a child is in its driver's cgroup, so a rise during a job whose process died of SIGKILL names the cause.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
        path = next(line.split("::", 1)[1] for line in lines if line.startswith("0::"))
        events = Path("/sys/fs/cgroup", path.lstrip("/"), "memory.events").read_text(encoding="utf-8")
    except (OSError, StopIteration, IndexError):
        return None
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return None


def settle(child: Child, returncode: int) -> None:
    """Record the status of a child that ended without a fresh ``result.json`` (nothing to do when it wrote one).

    SIGKILL while the cgroup's OOM-kill count rose: ``oom``; SIGKILL otherwise, SIGINT/SIGTERM/SIGHUP: ``killed``;
    any other signal (SIGSEGV, SIGABRT, …) or a non-zero exit: ``failed``. The reason names the signal, the peak RSS of
    the job's process tree as the driver saw it, the last line of ``worker.log`` and how to continue.
    """
    peak = f"peak memory of its process tree {child.peak_rss_bytes / 2**20:.0f} MiB"
    if returncode < 0:
        status, what = _signal_status(signal.Signals(-returncode), child.oom_kills_at_start, peak)
    else:
        last = _last_line(child.log_path)
        status, what = "failed", f"job process exited with code {returncode}" + (f" ({last})" if last else "")
    record = {"peak_rss_mb": round(child.peak_rss_bytes / 2**20, 1)} if child.peak_rss_bytes else None
    reason = f"{what}; see {child.log_path}; continue with --resume"
    write_missing_result(child.spec, child.started, status, reason, record=record)


def _signal_status(sig: signal.Signals, oom_kills_at_start: int | None, peak: str) -> tuple[str, str]:
    """(status, reason) of a child that a signal ended."""
    oom_kills = oom_kill_count()
    if sig == signal.SIGKILL and oom_kills is not None and oom_kills_at_start is not None:
        if oom_kills > oom_kills_at_start:
            return "oom", f"job process was killed by the kernel's OOM killer (out of host memory; {peak})"
    if sig == signal.SIGKILL or sig in _STOP_SIGNALS:
        return "killed", f"job process was killed by {sig.name} ({peak}; out of host memory?)"
    return "failed", f"job process crashed with {sig.name} ({signal.strsignal(sig) or sig.name}; {peak})"


def _last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log (its end is where a crash says why), shortened to ``limit`` characters."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 8192))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _log_to_worker_log(spec: JobSpec) -> None:
    """INFO and up into the job's ``worker.log``; warnings also on stderr when it is not that log (the terminal)."""
    path = rundir.worker_log_path(spec.run_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    handlers: list[logging.Handler] = [to_file]
    try:
        same = os.path.samestat(os.fstat(sys.stderr.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        to_terminal = logging.StreamHandler(sys.stderr)
        to_terminal.setLevel(logging.WARNING)
        handlers.append(to_terminal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers)
    if spec.progress and not same:
        # Plain progress lines (iterations; no bars off a terminal) reach the driver, which forwards this output;
        # the per-job line is the driver's own.
        lines = logging.StreamHandler(sys.stderr)
        lines.setFormatter(logging.Formatter("%(message)s"))
        lines.addFilter(lambda record: not getattr(record, progress.JOB_SUMMARY, False))
        logging.getLogger(progress.PROGRESS_LOGGER).addHandler(lines)


def worker_main(argv: Sequence[str]) -> int:
    """Entry point of a child (``python -m segbench.executors SPEC [SYS_PATH]``): run one job given as JSON."""
    keep_freed_memory()  # before the job allocates: a step's freed tensors are reused, not faulted in again
    fields: dict[str, Any] = json.loads(argv[0])
    fields["imports"] = tuple(fields.get("imports", ()))
    spec = JobSpec(**fields)
    if len(argv) > 1:  # the driver's import path: the user's own modules are found as they were in the driver
        sys.path.extend(entry for entry in json.loads(argv[1]) if entry not in sys.path)
    _log_to_worker_log(spec)
    log_job_start(spec)

    # `kill` / the driver's forwarded Ctrl-C: checkpoint at the next step, record `killed`.
    install_interrupt_handlers()
    try:
        result = run_job(spec)
    except KeyboardInterrupt:
        # run_job recorded `killed`. Returning (rather than raising) drops the traceback's frames now, so the data
        # loader shuts its workers down in order instead of leaving them to multiprocessing's exit handler.
        log.info("%s interrupted", rundir.job_label(spec))
        gc.collect()
        return 128 + signal.SIGINT
    log.info("%s ended: %s %s", rundir.job_label(spec), result.status, result.reason)
    return 0
