"""What a model costs: parameters, FLOPs, peak memory, throughput, and the environment the numbers came from.

Pure helpers; the trainer calls them and writes the figures to ``jobs.csv`` / ``manifest.json``. Memory is
reported in MiB (2**20 bytes) and named ``*_mb`` for brevity.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segbench.precision import cpu_features, cpu_model

log = logging.getLogger(__name__)

_MIB = 2**20
# FLOPs are counted on a cube of at least this many voxels a side (rounded up to the divisor): the FLOPs per
# voxel of a padded conv net do not depend on the input size, so a small input gives the same answer fast.
FLOP_COUNT_MIN_SIDE = 16


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), shared tensors counted once."""
    # model.parameters() already deduplicates tied weights.
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Uses ``resource.getrusage`` (kilobytes on Linux, bytes on macOS); falls back to psutil where the
    ``resource`` module does not exist (Windows: peak working set, else the current RSS).
    """
    try:
        import resource
    except ImportError:
        import psutil

        info = psutil.Process().memory_info()
        return float(getattr(info, "peak_wset", info.rss)) / _MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def _is_cuda(device: torch.device | str | int) -> bool:
    if isinstance(device, int):
        return True  # torch's convention: a bare index is a CUDA device
    return torch.device(device).type == "cuda"


def reset_cuda_peak(device: torch.device | str | int) -> None:
    """Start a new peak-memory measurement on a CUDA ``device``; no-op for other devices."""
    if _is_cuda(device):
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device: torch.device | str | int) -> tuple[float | None, float | None]:
    """Peak CUDA memory since the last :func:`reset_cuda_peak`, in MiB.

    Returns:
        ``(allocated, reserved)``: tensors' peak and the caching allocator's peak (what other processes lose);
        ``(None, None)`` for a non-CUDA device.
    """
    if not _is_cuda(device):
        return None, None
    return (
        torch.cuda.max_memory_allocated(device) / _MIB,
        torch.cuda.max_memory_reserved(device) / _MIB,
    )


def synchronize(device: torch.device | str | int) -> None:
    """Wait for queued CUDA work on ``device`` (so a timer measures it); no-op for other devices."""
    if _is_cuda(device):
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class _Iteration:
    data_wait_s: float
    step_s: float
    voxels: int


class ThroughputMeter:
    """Per-iteration timings reduced to steady-state throughput.

    The first ``warmup`` iterations (cuDNN autotuning, allocator growth, worker start-up) are excluded from
    the rates; they count in ``total_s``. If no iteration is past the warm-up, the rates use all iterations
    rather than reporting nothing.

    Example:
        >>> meter = ThroughputMeter(warmup=1)
        >>> for wait, step in [(1.0, 1.0), (0.1, 0.4), (0.1, 0.4)]:
        ...     meter.record(data_wait_s=wait, step_s=step, voxels=1000)
        >>> meter.summary()["iters_per_s"]
        2.0
    """

    def __init__(self, *, warmup: int = 3) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.warmup = warmup
        self._iters: list[_Iteration] = []

    def record(self, *, data_wait_s: float, step_s: float, voxels: int) -> None:
        """Add one iteration.

        Args:
            data_wait_s: seconds the step waited for its batch (loader not keeping up).
            step_s: seconds of forward + backward + optimizer step (synchronised on CUDA).
            voxels: voxels in the batch (batch size × patch voxels).

        Raises:
            ValueError: a negative or non-finite time, or negative voxels.
        """
        if not (math.isfinite(data_wait_s) and math.isfinite(step_s)) or data_wait_s < 0 or step_s < 0:
            raise ValueError(f"times must be finite and >= 0, got data_wait_s={data_wait_s}, step_s={step_s}")
        if voxels < 0:
            raise ValueError(f"voxels must be >= 0, got {voxels}")
        self._iters.append(_Iteration(float(data_wait_s), float(step_s), int(voxels)))

    def summary(self) -> dict[str, float | int]:
        """Steady-state statistics.

        Returns:
            ``iterations`` (all), ``steady_iterations`` (used for the rates), ``iters_per_s``,
            ``voxels_per_s``, ``data_wait_share`` (fraction of steady wall time spent waiting for data),
            ``mean_step_s`` (steady), ``total_s`` (wait + step over all iterations). Rates are NaN with no
            iterations or zero elapsed time.
        """
        steady = self._iters[self.warmup :] or self._iters
        wait = sum(i.data_wait_s for i in steady)
        step = sum(i.step_s for i in steady)
        elapsed = wait + step
        nan = float("nan")
        return {
            "iterations": len(self._iters),
            "steady_iterations": len(steady),
            "iters_per_s": len(steady) / elapsed if elapsed > 0 else nan,
            "voxels_per_s": sum(i.voxels for i in steady) / elapsed if elapsed > 0 else nan,
            "data_wait_share": wait / elapsed if elapsed > 0 else nan,
            "mean_step_s": step / len(steady) if steady else nan,
            "total_s": sum(i.data_wait_s + i.step_s for i in self._iters),
        }


def count_flops(model: nn.Module, input_shape: tuple[int, ...], *, train_step: bool) -> int:
    """Floating-point operations of one forward pass (or forward + backward) on a zero input of ``input_shape``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, a
    multiply-add counts 2; normalisation, activations, pooling and interpolation are not counted. The input
    is created on the model's device (``meta`` works and costs nothing). The model's train/eval mode and its
    gradients are restored afterwards.

    Args:
        model: the network.
        input_shape: (B, C_in, D, H, W) with sizes that are multiples of the model's divisor.
        train_step: False: ``eval()`` forward under ``no_grad``; True: ``train()`` forward and backward of the
            summed logits (the optimizer step is not counted).

    Returns:
        The total FLOP count.
    """
    return measure_flops(model, input_shape, train_step=train_step)[1]


def measure_flops(model: nn.Module, input_shape: tuple[int, ...], *, train_step: bool) -> tuple[int, int]:
    """(FLOPs of the forward pass, FLOPs of the whole step), counted as :func:`count_flops`; both equal when
    ``train_step`` is False."""
    from torch.utils.flop_counter import FlopCounterMode

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
    was_training = model.training
    grads = {p: p.grad for p in model.parameters()}
    x = torch.zeros(input_shape, device=device, dtype=dtype)
    try:
        model.train(train_step)
        with FlopCounterMode(display=False) as counter:
            with torch.set_grad_enabled(train_step):
                logits = model(x)
            forward = counter.get_total_flops()
            if train_step:
                logits.sum().backward()
    finally:
        model.train(was_training)
        for p, grad in grads.items():
            p.grad = grad
    return int(forward), int(counter.get_total_flops())


def flop_probe_side(divisor: int) -> int:
    """Side of the cube FLOPs are counted on: a multiple of ``divisor``, at least 16 and at least twice ``divisor``.

    At least 2 divisors a side, so the coarsest level keeps 2³ voxels: train-mode batch norm needs more than one value
    per channel.
    """
    return divisor * max(2, math.ceil(FLOP_COUNT_MIN_SIDE / divisor))


def allocated_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what Slurm, taskset or a container allotted), not the
    machine's count that ``os.cpu_count()`` gives; the latter where the platform has no affinity call."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def environment_info(*, cwd: str | Path | None = None) -> dict[str, Any]:
    """Software and hardware the results were produced with (goes into ``manifest.json``).

    Args:
        cwd: folder whose git commit is recorded; default the current directory.

    Returns:
        JSON-serialisable dict: ``python``, ``platform``, ``torch``, ``cuda`` (build version or None),
        ``cudnn`` (version or None), ``gpus`` (names, empty without CUDA), ``cpu`` (model name),
        ``cpu_features`` (torch's kernel capability and vector instruction sets, which decide the CPU kernels and
        hence the results: :func:`segbench.precision.cpu_features`), ``cpu_count``, ``cpus_allocated``
        (:func:`allocated_cpus`), ``numpy``, ``segbench``,
        ``git_commit`` (None outside a git repository).
    """
    from segbench import __version__

    cuda_ok = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda_ok else [],
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "cpus_allocated": allocated_cpus(),
        "numpy": np.__version__,
        "segbench": __version__,
        "git_commit": _git_commit(Path.cwd() if cwd is None else Path(cwd)),
    }


def _git_commit(folder: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None  # no git, or folder missing: the commit is simply unknown
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def matmul_peak_flops(
    device: torch.device | str, *, size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Measured floating-point throughput of a square matmul: the hardware reference for achieved FLOP/s.

    One untimed warm-up, then the best of ``repeats`` timed products (best, because interference from other
    processes only ever slows a run down).

    Args:
        device: where to measure.
        size: matrix side; ``2 * size**3`` FLOPs per product.
        repeats: timed products.
        dtype: the precision to measure in, matching the work it is a reference for: ``torch.bfloat16`` for bf16
            autocast (on CPUs without native bf16 instructions it is emulated, hence slow), ``torch.float16`` for
            fp16, ``torch.float32`` for fp32 (on GPUs subject to ``torch.backends.cuda.matmul.allow_tf32``).

    Returns:
        FLOP/s (float).

    Raises:
        ValueError: ``size`` or ``repeats`` < 1.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1, got size={size}, repeats={repeats}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device, dtype)
    b = torch.randn(size, size, generator=generator).to(device, dtype)
    with torch.inference_mode():
        torch.mm(a, b)
        synchronize(device)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / max(best, 1e-12)
