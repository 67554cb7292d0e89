"""torch's process-wide state that one job sets while it runs, and restores afterwards.

Several jobs can run one after the other in one process (the Python API's default executor, ``--in-process``), so
nothing a job sets may outlive it:

* **The current CUDA device.** A job on ``cuda:N`` makes GPU N current. Without it, everything that uses the
  *current* device lands on GPU 0, which may be another user's: the DataLoader's pin-memory thread (it pins through
  the current device, with a CUDA context of several hundred MiB), ``torch.cuda`` calls without a device.
* **TF32.** ``--precision fp32`` means IEEE fp32: torch's default lets cuDNN run fp32 convolutions in TF32 (10-bit
  mantissa) on Ampere and newer GPUs, so a job recorded as fp32 would have trained in TF32, and its FLOP/s compared
  with an fp32 matmul peak could exceed 1. A job turns TF32 off for matmuls and cuDNN whatever its precision (the
  fp32 parts of a bf16/fp16 job, such as the loss, stay IEEE too) and records both flags (:func:`tf32_flags`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["cuda_device", "ieee_fp32", "job_scope", "tf32_flags"]


def tf32_flags() -> dict[str, bool]:
    """The two TF32 switches as they are now: ``{"tf32_matmul": …, "tf32_cudnn": …}`` (the ``jobs.csv`` columns)."""
    return {
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
    }


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions within the block; the previous switches restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def cuda_device(device: torch.device | str) -> Iterator[None]:
    """Make ``device`` the current CUDA device within the block, then restore the previous one.

    A no-op for a CPU device and for ``cuda`` without an index (the current device, already right). Only
    ``cuda:N`` touches CUDA, so a CPU job never initialises it.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is None:
        yield
        return
    previous = torch.cuda.current_device()
    torch.cuda.set_device(device.index)
    try:
        yield
    finally:
        torch.cuda.set_device(previous)


@contextlib.contextmanager
def job_scope(device: torch.device | str) -> Iterator[None]:
    """Both of the above, for one job on ``device``."""
    with ieee_fp32(), cuda_device(device):
        yield
