"""The stop flag of a process: set on SIGINT/SIGTERM (or Slurm's pre-emption signal), read by executors and jobs.

A stop request that arrives while a training loop runs is *deferred*: the loop saves a checkpoint at its next step
boundary and only then stops (:class:`segbench.callbacks.StopAtBoundary`), so an interruption loses no finished step.
Outside a training loop (preprocessing, prediction, a driver waiting for its jobs) it stops at once. A second signal
while a deferred stop is pending stops at once too (the user insists).

A leaf module (no segbench imports), so the CLI that sets the flag and the executors and jobs that read it all
import it from here without an import cycle.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Set by a stop request: whatever exception the interruption surfaces as inside a job, the job is recorded as killed
# (not failed) and no further job starts.
STOP_REQUESTED = threading.Event()
KILLED_REASON = "interrupted (SIGINT/SIGTERM); continue with --resume"


class Preempted(BaseException):  # noqa: N818 - not an error: the scheduler asked the job to make room
    """A Slurm job stops (checkpoint saved) so that it can be requeued; no ``result.json`` is written.

    A ``BaseException``, like ``KeyboardInterrupt``: a job's generic error handling must not turn it into ``failed``.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped on {signal.Signals(signum).name} to be requeued")
        self.signum = signum


_state: dict[str, Any] = {"deferring": False, "exception": None}


def request_stop(exception: Callable[[], BaseException] = KeyboardInterrupt) -> bool:
    """Record a stop request; ``True`` when a training loop will honour it at its next step boundary.

    Call it from a signal handler. When it returns ``False`` (no training loop runs, or a deferred stop was already
    pending) the handler must stop now, e.g. by raising ``exception()``.

    Args:
        exception: what the training loop raises once its checkpoint is saved (``KeyboardInterrupt``: the job is
            recorded ``killed``; :class:`Preempted`: it is requeued without a result).
    """
    already = STOP_REQUESTED.is_set()
    STOP_REQUESTED.set()
    if already or not _state["deferring"]:
        return False
    _state["exception"] = exception
    return True


def stop_pending() -> bool:
    """Whether a deferred stop waits for the next step boundary of a running training loop."""
    return bool(_state["deferring"]) and STOP_REQUESTED.is_set()


def stop_exception() -> BaseException:
    """The exception a training loop raises for the pending stop request (``KeyboardInterrupt`` by default)."""
    factory = _state["exception"] or KeyboardInterrupt
    return factory()


def clear() -> None:
    """Forget any stop request (a new run in the same process)."""
    STOP_REQUESTED.clear()
    _state["exception"] = None


@contextmanager
def deferred_stops() -> Iterator[None]:
    """While active, :func:`request_stop` defers to the next step boundary; on a clean exit a pending stop raises."""
    _state["deferring"] = True
    try:
        yield
    finally:
        _state["deferring"] = False
    if STOP_REQUESTED.is_set():  # the request came after the loop's last check: its final checkpoint is saved
        raise stop_exception()


def interrupt_handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - the signal-handler signature
    """SIGINT/SIGTERM handler of a process that runs jobs: stop at the next step boundary, or now."""
    if not request_stop(KeyboardInterrupt):
        raise KeyboardInterrupt


def install_interrupt_handlers() -> None:
    """Make SIGINT and SIGTERM (Ctrl-C, ``kill``, a scheduler) stop this process cleanly (main thread only)."""
    signal.signal(signal.SIGTERM, interrupt_handler)
    signal.signal(signal.SIGINT, interrupt_handler)
