"""The training-loop callbacks of a job: learning curve, checkpoints, stop requests, time limit, progress, memory.

Each is a small callable ``callback(state: LoopState) -> None`` handed to :func:`segbench.training.train`, which
calls it after every step and once more with ``state.finished = True``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from segbench import results, stop
from segbench.rundir import JobRef
from segbench.training import LoopState

log = logging.getLogger(__name__)


class JobTimeout(RuntimeError):
    """The job exceeded its wall-clock limit (``config.job_timeout_s``)."""


class Deadline:
    """Raises :class:`JobTimeout` once ``limit_s`` seconds have passed since ``started`` (``time.perf_counter``).

    ``limit_s=None`` never expires. Call :meth:`check` between steps of other phases (e.g. per predicted case).
    """

    def __init__(self, limit_s: float | None, *, started: float) -> None:
        self.limit_s = limit_s
        self.started = started

    def check(self, where: str) -> None:
        """Raise :class:`JobTimeout` naming ``where`` (e.g. ``"at iteration 12"``) when the limit has passed."""
        if self.limit_s is not None and time.perf_counter() - self.started > self.limit_s:
            raise JobTimeout(f"job exceeded its time limit of {self.limit_s:g} s {where}")

    def __call__(self, loop: LoopState) -> None:
        self.check(f"at iteration {loop.iteration}")


class CurveLogger:
    """Appends the mean loss of every ``every`` steps (and of the last steps) to the job's ``training_log.csv``.

    ``curve`` holds the rows kept from an earlier attempt (resume); it is rewritten atomically after each new row.
    ``window`` holds the losses of the steps since the last row (saved in a checkpoint taken between two rows, so
    that a job stopped and resumed there writes the same curve as an uninterrupted one).
    """

    def __init__(
        self,
        run_dir: str | Path,
        job: JobRef,
        *,
        every: int,
        curve: list[dict[str, float]],
        window: list[float] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.job = job
        self.every = every
        self.curve = curve
        self.window: list[float] = list(window or [])

    def __call__(self, loop: LoopState) -> None:
        if not loop.finished:
            self.window.append(loop.loss)
        if self.window and (loop.iteration % self.every == 0 or loop.finished):
            mean = float(np.mean(self.window))
            self.curve.append({"iteration": loop.iteration, "loss": mean, "lr": loop.lr, "wall_s": loop.elapsed_s})
            self.window.clear()
            results.write_learning_curve(self.run_dir, self.job, self.curve)


class Checkpointer:
    """Saves ``snapshot(loop)`` with ``save(folder, payload)`` every ``every`` steps and at the end of training.

    ``save`` and ``snapshot`` are passed in (:func:`segbench.checkpoints.save_checkpoint` and
    :func:`segbench.checkpoints.snapshot`), so a caller can observe or interrupt saving.
    """

    def __init__(
        self,
        folder: Path,
        *,
        every: int,
        start: int,
        save: Callable[[Path, dict[str, Any]], Any],
        snapshot: Callable[[LoopState], dict[str, Any]],
    ) -> None:
        self.folder = folder
        self.every = every
        self.last_saved = start  # nothing to save before the first new step (a resume starts from a checkpoint)
        self.save = save
        self.snapshot = snapshot

    def __call__(self, loop: LoopState) -> None:
        if loop.iteration % self.every == 0 or loop.finished:
            self.save_now(loop)

    def save_now(self, loop: LoopState) -> None:
        """Save a checkpoint of ``loop`` unless one of this very iteration exists."""
        if loop.iteration != self.last_saved:
            self.save(self.folder, self.snapshot(loop))
            self.last_saved = loop.iteration


class StopAtBoundary:
    """Honours a deferred stop request (:mod:`segbench.stop`): saves a checkpoint of this step, then stops.

    Put it after the curve logger and the checkpointer, so the checkpoint holds everything this step produced.

    Raises:
        KeyboardInterrupt | segbench.stop.Preempted: once the checkpoint is saved, whatever the request asked for.
    """

    def __init__(self, checkpointer: Checkpointer) -> None:
        self.checkpointer = checkpointer

    def __call__(self, loop: LoopState) -> None:
        if stop.STOP_REQUESTED.is_set():
            self.checkpointer.save_now(loop)
            log.warning("stopping: checkpoint saved at iteration %d", loop.iteration)
            raise stop.stop_exception()


class ProgressBar:
    """Training progress: a tqdm bar on a terminal, else a plain line every ``lines_every`` iterations.

    ``enabled=False`` shows nothing. The plain lines go to :data:`segbench.progress.log` (see :mod:`segbench.progress`).
    """

    def __init__(self, *, enabled: bool, total: int | None, start: int, desc: str, lines_every: int = 10) -> None:
        from segbench import progress

        self._bar = None
        self._lines_every = lines_every if enabled and not progress.interactive() else 0
        self._desc, self._total = desc, total
        self._started = (time.perf_counter(), start)
        if enabled and progress.interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc=desc, unit="it", leave=False)

    def __call__(self, loop: LoopState) -> None:
        if loop.finished:
            return
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loop.loss:.3f}")
        elif self._lines_every and (loop.iteration % self._lines_every == 0 or loop.iteration == self._total):
            from segbench import progress

            seconds, first = time.perf_counter() - self._started[0], self._started[1]
            speed = (loop.iteration - first) / seconds if seconds > 0 else float("nan")
            progress.log.info(progress.iteration_line(self._desc, iteration=loop.iteration, total=self._total,
                                                      loss=loop.loss, iters_per_s=speed))  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class CaseProgress:
    """Prediction progress of a job: a tqdm bar over cases on a terminal, else one plain line per case with its time
    (``unet fold 3: case la_007 (2/4) predicted in 12.3 s``). ``enabled=False`` shows nothing."""

    def __init__(self, *, enabled: bool, total: int, desc: str) -> None:
        from segbench import progress

        self._desc, self._total = desc, total
        self._lines = enabled and not progress.interactive()
        self._bar = None
        if enabled and progress.interactive():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=f"{desc} predict", unit="case", leave=False)

    def update(self, case_id: str, *, index: int, seconds: float, kept: bool) -> None:
        if self._bar is not None:
            self._bar.update(1)
        elif self._lines:
            from segbench import progress

            progress.log.info(progress.case_line(self._desc, case_id, index=index, total=self._total,
                                                 seconds=seconds, kept=kept))  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class PeakRss:
    """Peak resident memory of this process and its children (data-loader workers), sampled from creation on.

    The figure is :class:`TreeMemory`'s: the job process's RSS plus the private memory of its descendants. A
    background thread samples it every ``interval_s`` seconds (a step's transient peak lasts longer than that at any
    patch size worth measuring); every training step and :meth:`sample` add a sample too. Use as a context manager,
    or call :meth:`stop`.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self._tree = TreeMemory(psutil.Process())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="segbench-peak-rss", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            self._tree.sample()

    @property
    def peak_bytes(self) -> int:
        return self._tree.peak_bytes

    def stop(self) -> None:
        """Stop the sampling thread (after one last sample)."""
        self._stop.set()
        self._thread.join()
        self.sample()

    def __enter__(self) -> PeakRss:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __call__(self, loop: LoopState) -> None:  # noqa: ARG002 - the callback signature
        self.sample()

    @property
    def peak_mb(self) -> float:
        """Peak in MiB, rounded to 0.1."""
        return round(self.peak_bytes / 2**20, 1)


class TreeMemory:
    """Resident memory of a process tree: the root's RSS plus the USS (private memory) of each descendant.

    Forked data-loader workers share most of their pages with the job process; summing plain RSS would count those
    pages twice. The root's RSS is cheap to read and read at every :meth:`sample`; a descendant's USS needs its page
    tables walked (~10 ms), so descendants are re-read at most every ``children_every_s`` seconds (their memory
    changes slowly) and their last value is used in between.
    """

    def __init__(self, process: psutil.Process, *, children_every_s: float = 0.5) -> None:
        self.process = process
        self.peak_bytes = 0
        self._children_every_s = children_every_s
        self._children_bytes = 0
        self._children_read_at = -math.inf

    def sample(self) -> int:
        """Read the tree's memory now (bytes; 0 once the root has ended) and update :attr:`peak_bytes`."""
        try:
            root = self.process.memory_info().rss
        except psutil.Error:
            return 0
        now = time.monotonic()
        if now - self._children_read_at >= self._children_every_s:
            self._children_read_at = now
            self._children_bytes = _descendants_uss(self.process)
        total = root + self._children_bytes
        self.peak_bytes = max(self.peak_bytes, total)
        return total


def _descendants_uss(process: psutil.Process) -> int:
    total = 0
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        return 0
    for child in children:
        try:
            total += child.memory_full_info().uss
        except psutil.Error:  # ended between listing and reading, or not ours to read
            continue
    return total
