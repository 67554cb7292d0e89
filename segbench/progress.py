"""Progress that reads well in a terminal and in a log file.

On a terminal (stderr is a TTY) long steps show tqdm bars; anywhere else (a log file, a pipe, a CI console) no bar
and no escape code is written, and :data:`log` (the ``segbench.progress`` logger) carries plain lines instead: one
every few training iterations and one per finished job, e.g. ``unet fold 3: done in 61 s, 2.0 it/s, val Dice 0.93``.
The per-job line is written in both cases, so it stays on screen after the job's bars close.

The library only logs; the CLI (:mod:`segbench.cli.group`) gives this logger a handler that prints through
``tqdm.write`` (so lines never break a bar) at the default verbosity.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

PROGRESS_LOGGER = "segbench.progress"
log = logging.getLogger(PROGRESS_LOGGER)
# Marks the per-job line on its log record (``extra={JOB_SUMMARY: True}``): a job process leaves it to its driver,
# which prints it with the job's place in the run (``[2/4] unet fold 0: done in ...``).
JOB_SUMMARY = "segbench_job_summary"


def interactive() -> bool:
    """True when stderr is a terminal: progress bars then, plain lines otherwise."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def line_interval(total: int | None, *, every: int) -> int:
    """Iterations between two plain progress lines: about a tenth of ``total``, a multiple of ``every`` (≥ 1)."""
    if not total:
        return max(1, every) * 10
    step = max(1, every)
    return max(step, int(math.ceil(total / 10 / step)) * step)


def iteration_line(desc: str, *, iteration: int, total: int | None, loss: float, iters_per_s: float) -> str:
    """``unet fold 3: iteration 50/120, loss 0.412, 2.1 it/s``."""
    of = f"/{total}" if total else ""
    speed = f", {iters_per_s:.1f} it/s" if iters_per_s and math.isfinite(iters_per_s) else ""
    return f"{desc}: iteration {iteration}{of}, loss {loss:.3f}{speed}"


def case_line(desc: str, case_id: str, *, index: int, total: int, seconds: float, kept: bool = False) -> str:
    """``unet fold 3: case la_007 (2/4) predicted in 12.3 s`` (``kept from the interrupted attempt`` when resumed)."""
    done = "kept from the interrupted attempt, scored" if kept else "predicted"
    return f"{desc}: case {case_id} ({index}/{total}) {done} in {seconds:.1f} s"


def job_line(label: str, status: str, reason: str, record: dict[str, Any], metrics: list[dict]) -> str:
    """The line printed when a job ends: ``unet fold 3: done in 61 s, 2.0 it/s, val Dice 0.93`` (or why it failed).

    ``label`` names the job (:func:`segbench.rundir.job_label`); ``record`` and ``metrics`` are its result.json parts.
    """
    seconds = record.get("job_seconds")
    known = isinstance(seconds, int | float) and math.isfinite(seconds)  # unknown when the driver wrote the result
    parts = [f"{status} in {seconds:.0f} s" if known else status]
    speed = record.get("train_iters_per_s")
    if isinstance(speed, int | float) and math.isfinite(speed):
        parts.append(f"{speed:.1f} it/s")
    dice = [float(row["dice"]) for row in metrics if isinstance(row.get("dice"), int | float)]
    if dice:
        parts.append(f"val Dice {sum(dice) / len(dice):.2f}")
    text = f"{label}: " + ", ".join(parts)
    return text if status == "done" or not reason else f"{text} — {reason}"
