"""One writer per run directory: an advisory POSIX record lock (``fcntl.lockf``) on ``RUN_DIR/run.lock``.

The kernel releases the lock when its process dies (even on SIGKILL), so a crashed run never leaves a stale lock
behind, while a second live ``segbench run`` on the same directory is refused with the holder's pid, host and start
time.

Why POSIX record locks and not ``flock``: an ``flock`` belongs to the open file description, which ``fork`` shares.
A data-loader worker forked by a job kept the job's lock held after the job process was SIGKILLed (the OOM killer)
until the child ran its at-fork handler, so for that instant the driver could not record the job as ``killed``/``oom``
(a flaky test showed the window). A record lock belongs to the *process*: a forked child never holds it, so the lock
is free the moment its holder dies, whatever its children do.

Two rules come with record locks, and this module keeps both inside itself:

- a process never conflicts with itself, so a second lock on a path this process already holds is refused here
  (``_HELD``), as ``flock`` on a second descriptor would have refused it;
- closing *any* descriptor of the file drops the process's lock, so a probe (:func:`lock_held`) never opens a path
  this process holds.
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
        if _held_here(self.path):  # a record lock never conflicts within its own process: refuse it here
            raise RunDirectoryError(
                f"{self.path.parent} is in use by this process; wait for it to finish"
                + (" or choose another --out" if self.path.name == RUN_LOCK_FILE else "")
            )
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the lock's lifetime
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES, by platform
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
            self._handle.close()  # closing the descriptor drops the process's record lock
            self._handle = None
        _HELD.discard(self)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # the locks this process holds


def _held_here(path: Path) -> bool:
    return any(lock.path.resolve() == path.resolve() for lock in list(_HELD))


def lock_held(path: str | Path) -> bool:
    """Whether a live process holds the lock file at ``path`` (a non-blocking probe that never creates the file).

    The probe holds the lock for an instant; a holder starting in exactly that instant would be refused, so callers
    probe only locks of processes they did not start themselves.
    """
    path = Path(path)
    if _held_here(path):
        return True  # probing would close a descriptor of the file, and that drops this process's own lock
    try:
        # Read-only (a job.lock of another user in a shared run directory is readable, not writable): a shared lock
        # still conflicts with the holder's exclusive one.
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def _drop_locks_in_child() -> None:
    # A forked child (a data-loader worker) holds none of its parent's record locks; it only inherits the
    # descriptors. Forget them so that nothing in the child believes it holds a lock or refuses the path. Closing the
    # child's descriptor does not touch the parent's lock.
    for lock in list(_HELD):
        handle, lock._handle = lock._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)
