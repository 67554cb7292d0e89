"""How the (model × fold) jobs of a run are executed: locally (in-process or one job per GPU) or through submitit.

Every executor (:class:`~segbench.executors.base.Executor`) is a callable ``executor(specs) -> None`` that runs
:func:`segbench.job.run_job` once per :class:`~segbench.job.JobSpec`; the job itself reads everything from the run
directory, resumes from its own latest checkpoint and writes ``result.json`` last, so executors only decide *where*
and *when* a job runs. One module each:

- :mod:`~segbench.executors.base`: the :class:`Executor` protocol and shared helpers;
- :mod:`~segbench.executors.inprocess`: :func:`run_in_process`, every job in the driver, one after the other;
- :mod:`~segbench.executors.local`: :class:`LocalExecutor` (``--executor local``), every job in a fresh child
  process, one at a time on the CPU or one per GPU (``in_process=True``: all inside the driver);
- :mod:`~segbench.executors.worker`: the child process of one job (``python -m segbench.executors``) and the status
  of a child that died without a result (segfault, abort, OOM killer);
- :mod:`~segbench.executors.slurm`: :class:`SubmititExecutor` (``--executor slurm``), a Slurm job array through
  submitit, requeued on preemption or time limit;
- :mod:`~segbench.executors.state`: resume-state probing (:func:`job_state`: finished, running or lost).
"""

from __future__ import annotations

from segbench.errors import ConfigError
from segbench.executors.base import Executor, as_executor
from segbench.executors.inprocess import InProcessExecutor, run_in_process
from segbench.executors.local import (
    GpuSlots,
    LocalExecutor,
    LocalOptions,
    parse_gpu_ids,
    run_in_workers,
    run_on_gpus,
    visible_gpu_ids,
)
from segbench.executors.slurm import CheckpointableJob, SlurmOptions, SubmititExecutor, Tracked, slurm_parameters
from segbench.executors.state import job_lock_held, job_state, read_record
from segbench.executors.worker import oom_kill_count, worker_command, worker_env

EXECUTOR_NAMES = ("local", "slurm")

__all__ = [
    "EXECUTOR_NAMES",
    "CheckpointableJob",
    "Executor",
    "GpuSlots",
    "InProcessExecutor",
    "LocalExecutor",
    "LocalOptions",
    "SlurmOptions",
    "SubmititExecutor",
    "Tracked",
    "as_executor",
    "job_lock_held",
    "job_state",
    "make_executor",
    "parse_gpu_ids",
    "read_record",
    "oom_kill_count",
    "run_in_process",
    "run_in_workers",
    "run_on_gpus",
    "slurm_parameters",
    "visible_gpu_ids",
    "worker_command",
    "worker_env",
]


def make_executor(name: str, *, options: LocalOptions | SlurmOptions | None = None) -> Executor:
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
