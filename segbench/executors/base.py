"""What every executor is, and the small helpers they share.

An executor is a callable ``executor(specs) -> None`` that runs :func:`segbench.job.run_job` once per
:class:`~segbench.job.JobSpec` and a ``resolves_device`` flag: ``True`` when jobs resolve ``--device auto`` where
they run (Slurm: the driver's login node says nothing about the GPUs a job gets), ``False`` when the driver resolves
it before any job starts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from segbench.errors import ConfigError
from segbench.job import JobSpec

log = logging.getLogger(__name__)


@runtime_checkable
class Executor(Protocol):
    """Runs a list of jobs to completion (each job writes its own ``result.json``)."""

    resolves_device: bool  # True: jobs resolve --device where they run; False: the driver resolves it first

    def __call__(self, specs: list[JobSpec]) -> None: ...


class CallableExecutor:
    """A plain ``function(specs)`` as an :class:`Executor` whose device the driver resolves."""

    resolves_device = False
    runs_in_process = True  # unknown: a plain function may run jobs anywhere, so nothing is refused up front

    def __init__(self, function: Callable[[list[JobSpec]], Any]) -> None:
        self.function = function

    def __call__(self, specs: list[JobSpec]) -> None:
        self.function(specs)


def as_executor(executor: Executor | Callable[[list[JobSpec]], Any]) -> Executor:
    """``executor`` itself when it is an :class:`Executor`, else a plain callable wrapped as one."""
    return executor if isinstance(executor, Executor) else CallableExecutor(executor)


def parse_device(requested: str) -> Any:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a ``torch.device`` (nothing is asked of the hardware).

    Raises:
        ConfigError: anything else (the message names ``--device`` and its choices).
    """
    import torch

    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got {requested!r})")
    return device


def job_progress_bar(specs: Sequence[JobSpec], desc: str) -> Any:
    """A tqdm bar counting finished jobs, or ``None`` when the jobs show no progress (or there are none)."""
    if not specs or not specs[0].progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(specs), desc=desc, unit="job", disable=None)  # disable=None: no bar off a TTY


def log_job_start(spec: JobSpec, attempt: int | None = None) -> None:
    """Log (and, in a bare worker process, configure logging for) the start of a job in its own process."""
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
