"""One writer per run directory: an advisory ``fcntl`` lock on ``RUN_DIR/run.lock``.

The kernel releases the lock when its process dies (even on SIGKILL), so a crashed run never leaves a stale lock
behind, while a second live ``segbench run`` on the same directory is refused with the holder's pid, host and start
time. A forked child (a data-loader worker) does not keep its parent's locks: see :func:`_drop_locks_in_child`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path
from typing import IO

from segbench.errors import RunDirectoryError
from segbench.rundir import RUN_LOCK_FILE


class RunLock:
    """Context manager holding the exclusive lock of a run directory (or, with ``name="job.lock"``, of a job folder).

    Raises:
        RunDirectoryError: another live process holds it (the message names that process).
    """

    def __init__(self, run_dir: str | Path, *, name: str = RUN_LOCK_FILE, what: str = "segbench run") -> None:
        self.path = Path(run_dir) / name
        self.what = what
        self._handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the lock's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise RunDirectoryError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish"
                + (" or choose another --out" if self.path.name == RUN_LOCK_FILE else "")
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.what} " + json.dumps(info))
        handle.flush()
        self._handle = handle
        _HELD.add(self)
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
        _HELD.discard(self)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # the locks this process holds


def _drop_locks_in_child() -> None:
    # An flock belongs to the open file description, which a fork shares. A data-loader worker forked by a job would
    # keep the job's lock held after the job process was SIGKILLed (the OOM killer) until the orphan noticed, so the
    # driver could not record the job as `killed`/`oom`. Closing the child's copy never unlocks while the parent
    # holds its own, and the child must never LOCK_UN (that would free the parent's lock): release becomes a no-op.
    for lock in list(_HELD):
        handle, lock._handle = lock._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)
