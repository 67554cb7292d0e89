"""A pre-imported process that forks one fresh child per CPU job, so a job does not pay Python's and torch's start-up.

A job process started from scratch spends about 3 s before its first step on a 2-core machine: 2 s importing
segbench, torch, pandas and SciPy, and 1.2 s importing ``torch._dynamo``, which ``torch.optim`` loads on its first
``zero_grad``. The default run has ten short jobs, so that was a third of its wall time. The zygote is started once per
run as ``python -m segbench.executors --zygote FD``, imports all of that, and then forks a child per job. Each child is
a process of its own, with its own session, ``worker.log`` and exit status, like a job started by ``subprocess``.
Every child starts from the same untouched zygote state, so no job's figures depend on the jobs before it.

Protocol: one ``SOCK_SEQPACKET`` socket. The zygote sends ``{"ready": true}`` once it has imported. The driver
sends one JSON request per job, ``{"argv": [...]}``, with the file descriptor that the child's stdout and stderr go
to. The zygote answers ``{"pid": N}``, and later ``{"exit": N, "returncode": R}``, where ``R`` is negative for a
signal, as with :attr:`subprocess.Popen.returncode`.
When the driver closes the socket or dies, the zygote exits; running children go on and finish their jobs.

CUDA jobs do not use the zygote (:class:`~segbench.executors.worker.Child` starts them from scratch): a child forked
from a process that has initialised CUDA cannot use CUDA. The zygote also checks this itself before every fork: once
CUDA is initialised in it (an imported plugin that touches the GPU at import time), it answers ``{"error": ...}``
instead of forking, and the driver starts that job and the following ones the slow way.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

_MAX_MESSAGE = 1 << 20  # bytes; a request holds one JobSpec and the driver's sys.path
# Imported once in the zygote besides the job's entry point and what it imports: torch.optim loads it lazily.
_PRELOAD = ("torch._dynamo",)


class ZygoteChild:
    """A job process forked by a :class:`Zygote`: the part of :class:`subprocess.Popen` the local executor uses."""

    def __init__(self, zygote: Zygote, pid: int, stdout: int | None) -> None:
        self._zygote = zygote
        self.pid = pid
        self.stdout = os.fdopen(stdout, "rb", buffering=0) if stdout is not None else None
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once the child has ended (negative: the signal that ended it), else ``None``."""
        if self.returncode is None:
            self.returncode = self._zygote.returncode(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the child ends; its exit code.

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"job process {self.pid}", timeout)
            time.sleep(0.05)
        return code

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:  # ended between the poll and the kill
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The driver's handle on a zygote process (see the module docstring).

    Args:
        env: the environment of the zygote, and so of every job it forks.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket = ours
        self._exits: dict[int, int] = {}
        self._ready = False
        self._refused = False  # it refused to fork once (CUDA initialised in it): every later job starts from scratch
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "segbench.executors", "--zygote", str(theirs.fileno())],
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # its import errors still reach stderr
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a terminal's Ctrl-C is the driver's to forward, never the zygote's
            )

    def spawn(self, argv: Sequence[str], *, output_fd: int | None = None) -> ZygoteChild | None:
        """Fork a child that runs ``worker_main(argv)`` with stdout and stderr on ``output_fd``.

        ``output_fd`` ``None``: a new pipe, readable as the child's ``stdout``. Returns ``None`` when the zygote is not
        running (it failed to import, or was killed); the caller then starts the job the slow way.
        """
        if self._refused or not self._wait_until_ready():
            return None
        read_end = None
        if output_fd is None:
            read_end, output_fd = os.pipe()
        try:
            socket.send_fds(self._socket, [json.dumps({"argv": list(argv)}).encode()], [output_fd])
            pid = self._receive_pid()
        except OSError as exc:
            log.warning("the job launcher stopped answering (%s); starting jobs from scratch", exc)
            pid = None
        finally:
            if read_end is not None:
                os.close(output_fd)  # the child holds its own copy
        if pid is None:
            if read_end is not None:
                os.close(read_end)
            return None
        return ZygoteChild(self, pid, read_end)

    def _wait_until_ready(self) -> bool:
        """Block until the zygote has imported everything (no time limit: a busy machine imports slowly)."""
        self._ready = self._ready or self._receive_until("ready") is not None
        return self._ready and self.process.poll() is None

    def _receive_pid(self) -> int | None:
        """The pid of the child just requested (a fork is quick), or ``None`` if the zygote died or refused to fork."""
        message = self._receive_until("pid", "error")
        if message is not None and "error" in message:
            log.warning("the job launcher refused to fork (%s); starting jobs from scratch", message["error"])
            self._refused = True  # it stays up to report the exits of the children it has forked
            return None
        return None if message is None else int(message["pid"])

    def _receive_until(self, *keys: str) -> dict | None:
        """The next message holding one of ``keys`` (others are recorded on the way), or ``None`` once the zygote has
        died."""
        while True:
            message = self._receive(timeout=1.0)
            if message is not None and any(key in message for key in keys):
                return message
            if message is None and self.process.poll() is not None:
                return None

    def _receive(self, timeout: float) -> dict | None:
        """The next message (exit reports are recorded on the way), or ``None`` at EOF or after ``timeout`` s."""
        self._socket.settimeout(timeout)
        try:
            data = self._socket.recv(_MAX_MESSAGE)
        except (TimeoutError, BlockingIOError, OSError):
            return None
        if not data:
            return None
        message = json.loads(data)
        if "exit" in message:
            self._exits[int(message["exit"])] = int(message["returncode"])
        return message

    def returncode(self, pid: int) -> int | None:
        """The exit code of child ``pid`` if the zygote has reported it, else ``None``."""
        while pid not in self._exits:
            if self._receive(timeout=0) is None:
                break
        if pid not in self._exits and self.process.poll() is not None:
            # The zygote died, so nobody will report on its children: find out from the process table.
            return _returncode_without_zygote(pid)
        return self._exits.get(pid)

    def close(self) -> None:
        """Stop the zygote (children already forked go on); idempotent."""
        try:
            self._socket.close()
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _returncode_without_zygote(pid: int) -> int | None:
    """An orphaned child's status: ``None`` while it runs, else 1 (its real exit status went to init)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 1
    except PermissionError:  # it exists (another user's process now has that pid, or it is ours under another uid)
        pass
    return None


def _serve(sock: socket.socket, run: Callable[[list[str]], int]) -> None:
    """The zygote's loop: fork a child per request, report each child's pid and exit status, end at EOF."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    children: set[int] = set()
    while True:
        if selector.select(timeout=0.05):
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 1)
            if not data:
                return
            if unsafe := fork_hazard():
                os.close(fds[0])
                sock.send(json.dumps({"error": unsafe}).encode())
                continue
            pid = os.fork()
            if pid == 0:
                selector.close()
                sock.close()
                _run_child(run, json.loads(data)["argv"], fds[0])  # never returns
            os.close(fds[0])
            children.add(pid)
            sock.send(json.dumps({"pid": pid}).encode())
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                sock.send(json.dumps({"exit": pid, "returncode": os.waitstatus_to_exitcode(status)}).encode())


def fork_hazard() -> str:
    """Why forking this process now would give a broken child, or ``""`` when it is safe.

    A child forked after CUDA was initialised cannot use CUDA (the driver's context does not survive a fork); torch
    raises "Cannot re-initialize CUDA in forked subprocess" at its first CUDA call, or worse, the child hangs.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialised in the job launcher, and a forked job could not use it"
    return ""


def _run_child(run: Callable[[list[str]], int], argv: list[str], output_fd: int) -> None:
    """In a freshly forked child: a session of its own, output on ``output_fd``, then the job; exits with its code."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.close(output_fd)
        code = run(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever happens, the traceback goes to worker.log and the child exits
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def zygote_main(argv: Sequence[str], *, run: Callable[[list[str]], int]) -> int:
    """``python -m segbench.executors --zygote FD``: preload, then serve the driver on socket ``FD``.

    Args:
        argv: ``[FD]``, the zygote's end of the socket.
        run: what a forked child runs with a request's ``argv`` (the job's entry point, already imported); its
            return value is the child's exit code.
    """
    sock = socket.socket(fileno=int(argv[0]))
    import importlib

    for module in _PRELOAD:
        importlib.import_module(module)
    sock.send(json.dumps({"ready": True}).encode())
    _serve(sock, run)
    return 0
