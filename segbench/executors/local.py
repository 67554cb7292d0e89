"""``--executor local``: every job in a fresh child process on this machine, one per GPU or one at a time on the CPU.

One process per job makes its figures independent of the jobs before it (peak RSS, caching allocators, leaks) and
turns a crash, an abort or a kernel OOM kill into a job status instead of the end of the run. A child
(``python -m segbench.executors``, see :mod:`~segbench.executors.worker`) sees exactly one GPU through
``CUDA_VISIBLE_DEVICES`` and runs on ``cuda:0``; its output goes to the job folder's ``worker.log``.
``LocalOptions(in_process=True)`` (``segbench run --in-process``) runs the jobs inside the driver instead.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from segbench import results, rundir
from segbench.errors import ConfigError
from segbench.executors.base import job_progress_bar
from segbench.executors.inprocess import run_in_process
from segbench.executors.state import split_running, wait_for_locks
from segbench.executors.worker import Child, settle, worker_env
from segbench.executors.zygote import Zygote
from segbench.job import JobSpec
from segbench.progress import job_line
from segbench.stop import STOP_REQUESTED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalOptions:
    """Options of ``--executor local``."""

    gpus: tuple[str, ...] | None = None  # CUDA_VISIBLE_DEVICES ids, one concurrent job each; None = all visible
    poll_s: float = 0.1  # how often the driver checks its job processes (a short job should not wait for it)
    # Run every job inside the driver instead (debugging, monkeypatched code): memory figures then depend on the jobs
    # before, and a crashing job takes the run down.
    in_process: bool = False


def visible_gpu_ids() -> tuple[str, ...]:
    """The GPU ids this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (default: ``0 .. count-1``)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(part.strip() for part in listed.split(",") if part.strip())[:count]
    return tuple(str(index) for index in range(count))


def parse_gpu_ids(text: str) -> tuple[str, ...]:
    """``"0,1,3"`` → ``("0", "1", "3")``.

    Raises:
        ConfigError: empty, repeated or malformed ids (message names ``--gpus``).
    """
    ids = tuple(part.strip() for part in text.split(","))
    if not ids or any(not re.fullmatch(r"[0-9]+|GPU-[0-9a-fA-F-]+|MIG-[0-9a-fA-F/-]+", i) for i in ids):
        raise ConfigError(f"--gpus takes comma-separated GPU ids such as 0,1,3 (got {text!r})")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus lists a GPU twice ({text!r}); give each id once")
    return ids


class GpuSlots:
    """One slot per GPU id (or one ``"cpu"`` slot): a job takes a free slot and gives it back when it ends."""

    def __init__(self, gpu_ids: Sequence[str]) -> None:
        if not gpu_ids:
            raise ValueError("GpuSlots needs at least one GPU id")
        self._free = list(gpu_ids)

    def take(self) -> str | None:
        """A free GPU id, or ``None`` when every GPU is busy."""
        return self._free.pop(0) if self._free else None

    def give_back(self, gpu_id: str) -> None:
        self._free.append(gpu_id)


class LocalExecutor:
    """``--executor local``: every job in a fresh child process on this machine (or all in this one, ``in_process``).

    CPU jobs run one after the other in one slot; CUDA jobs run one per GPU at a time (``--gpus``, default: every
    visible GPU for ``--device cuda``, the named one for ``cuda:N``), each child seeing exactly its GPU as ``cuda:0``.
    """

    resolves_device = False  # the driver resolves --device (it runs on the machine the jobs run on)

    def __init__(self, options: LocalOptions = LocalOptions()) -> None:
        self.options = options

    @property
    def runs_in_process(self) -> bool:
        """Whether jobs run inside the driver (``in_process``): otherwise they import what they need themselves."""
        return self.options.in_process

    def __call__(self, specs: list[JobSpec]) -> None:
        todo, running = split_running(specs)
        if self.options.in_process:
            run_in_process(todo)
        else:
            run_in_workers(todo, self._slots(specs), poll_s=self.options.poll_s)
        wait_for_locks(running, self.options.poll_s)

    def _slots(self, specs: Sequence[JobSpec]) -> tuple[str, ...] | None:
        """GPU ids to run on, one job each at a time; ``None``: CPU jobs, one at a time."""
        return self.gpu_ids_for(specs[0].device if specs else "cpu")

    def gpu_ids_for(self, device: str) -> tuple[str, ...] | None:
        """The GPU ids (``CUDA_VISIBLE_DEVICES`` values) jobs on ``device`` run on; ``None`` for CPU jobs."""
        if self.options.gpus is not None:
            return self.options.gpus
        if not device.startswith("cuda"):
            return None
        visible = visible_gpu_ids()
        index = torch_device_index(device)
        if index is None:
            return visible
        return (visible[index],) if index < len(visible) else (str(index),)


def torch_device_index(device: str) -> int | None:
    """``"cuda:1"`` → 1, ``"cuda"`` → ``None``."""
    _, _, index = device.partition(":")
    return int(index) if index else None


def run_in_workers(specs: Sequence[JobSpec], gpu_ids: Sequence[str] | None, *, poll_s: float = 0.1) -> None:
    """Run each job of ``specs`` in its own child process, at most one per slot at a time.

    Args:
        gpu_ids: one slot per GPU id (each child sees only its GPU and runs CUDA jobs on ``cuda:0``); ``None``: one
            CPU slot (jobs run one after the other; a child inherits ``CUDA_VISIBLE_DEVICES`` as it is).

    With one slot and progress on, a child's progress bars are forwarded to this process's stderr and a line per
    finished job is written there; with several slots each child's output goes only to its ``worker.log`` and one bar
    counts finished jobs. A child that dies without a result (segfault, abort, OOM killer, ``kill -9``) is recorded
    with a status and a reason (:func:`~segbench.executors.worker.settle`) and the others go on.

    Raises:
        KeyboardInterrupt: the stop flag is set or this process was interrupted: after forwarding one SIGINT to the
            running children (they record ``killed``) and waiting for them.
    """
    queue = list(specs)
    slots = GpuSlots(gpu_ids if gpu_ids is not None else ("cpu",))
    count = 1 if gpu_ids is None else len(gpu_ids)
    echo = count == 1 and bool(queue) and queue[0].progress
    running: dict[str, Child] = {}
    bar = None if echo else job_progress_bar(queue, "jobs" if gpu_ids is None else f"jobs on {count} GPU(s)")
    finished = 0
    # CPU jobs fork from one pre-imported process: ~3 s of interpreter and torch start-up per job saved.
    zygote = Zygote(worker_env(None, slots=1)) if gpu_ids is None and len(queue) > 1 else None
    try:
        while queue or running:
            while queue and not STOP_REQUESTED.is_set() and (slot := slots.take()) is not None:
                gpu_id = None if gpu_ids is None else slot
                running[slot] = _start_child(queue.pop(0), gpu_id, slots=count, echo=echo, zygote=zygote)
            if STOP_REQUESTED.is_set():
                raise KeyboardInterrupt
            time.sleep(poll_s)
            for slot, child in list(running.items()):
                if (returncode := child.poll()) is None:
                    continue
                child.finish()
                del running[slot]
                slots.give_back(slot)
                settle(child, returncode)
                finished += 1
                if bar is not None:
                    bar.update(1)
                _job_line(child, finished, finished + len(queue) + len(running))  # also with -q: one line per job
    except KeyboardInterrupt:
        _stop_children(list(running.values()))
        raise
    finally:
        if bar is not None:
            bar.close()
        if zygote is not None:
            zygote.close()


def _start_child(spec: JobSpec, gpu_id: str | None, *, slots: int, echo: bool, zygote: Zygote | None) -> Child:
    device = "cuda:0" if gpu_id is not None and spec.device.startswith("cuda") else spec.device
    child = Child(replace(spec, device=device, progress=echo), gpu_id, slots=slots, echo=echo, zygote=zygote)
    where = "on the CPU" if gpu_id is None else f"on GPU {gpu_id}"
    log.info("%s started %s (pid %d)", rundir.job_label(spec), where, child.process.pid)
    return child


def _job_line(child: Child, finished: int, total: int) -> None:
    """One line per finished job on stderr, under the child's (cleared) progress bars:
    ``[2/4] unet fold 0: done in 61 s, 2.0 it/s, val Dice 0.93`` (or its status and why)."""
    spec = child.spec
    try:
        result = results.read_job_result(rundir.result_path(spec.run_dir, spec))
    except (OSError, ValueError, KeyError):
        line = f"{rundir.job_label(spec)}: no result ({time.time() - child.started:.0f} s)"
    else:
        line = job_line(rundir.job_label(spec), result.status, result.reason, result.job, result.metrics)
    from tqdm.auto import tqdm

    tqdm.write(f"[{finished}/{total}] {line}", file=sys.stderr)  # above a jobs bar, never through it


def _stop_children(children: list[Child]) -> None:
    for child in children:
        child.process.send_signal(signal.SIGINT)
    for child in children:
        try:
            child.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        child.finish()


def run_on_gpus(specs: Sequence[JobSpec], gpu_ids: Sequence[str], *, poll_s: float = 0.1) -> None:
    """One child process per job, at most one per GPU at a time (:func:`run_in_workers` with GPU slots)."""
    run_in_workers(specs, gpu_ids, poll_s=poll_s)
