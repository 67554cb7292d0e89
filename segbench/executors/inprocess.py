"""The simplest executor: every job in the driver's process, one after the other (CPU or a single GPU)."""

from __future__ import annotations

import logging

from segbench.executors.base import job_progress_bar
from segbench.job import JobSpec, run_job
from segbench.stop import STOP_REQUESTED

log = logging.getLogger(__name__)


class InProcessExecutor:
    """:func:`run_in_process` as an :class:`~segbench.executors.base.Executor` (the driver resolves the device)."""

    resolves_device = False
    runs_in_process = True  # jobs see everything registered in this process, __main__ included

    def __call__(self, specs: list[JobSpec]) -> None:
        run_in_process(specs)


def run_in_process(specs: list[JobSpec]) -> None:
    """Run every job in this process, one after the other; a failing job never stops the next one.

    Raises:
        KeyboardInterrupt: the stop flag (:data:`segbench.stop.STOP_REQUESTED`) is set, or a job was interrupted.
    """
    bar = job_progress_bar(specs, "jobs")
    try:
        for spec in specs:
            if STOP_REQUESTED.is_set():
                raise KeyboardInterrupt
            if bar is not None:
                bar.set_postfix_str(f"{spec.model} fold {spec.fold}")
            try:
                result = run_job(spec)
            except OSError as exc:
                # result.json itself could not be written (e.g. disk full): run_job left a "failed" marker when it
                # could; either way the job is not reported as done and the next job still runs.
                log.error("%s fold %d: could not record its result (%s)", spec.model, spec.fold, exc)
            else:
                if result.status != "done":
                    log.warning("%s fold %d ended as %s: %s", spec.model, spec.fold, result.status, result.reason)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
