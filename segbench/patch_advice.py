"""Patch warnings that fit the device: a suggestion a CPU can train in reasonable time or a GPU can hold, and a warning
when the patch is larger than an image.

nnU-Net-style planning (:func:`segbench.runner.plan_patch`: the largest multiple of the models' divisor within the
median image and 128³ voxels) suits a large GPU. The suggestion made here is the largest planned patch that also fits
this run's device:

* **CPU**: one training step of the slowest model, measured here at the run's patch and scaled by voxels (convolution
  cost grows linearly with them), keeps a job's training within :data:`CPU_JOB_TRAIN_S` seconds at ``--iterations``,
  or leaves at least :data:`MIN_ITERATIONS` steps within ``--time-budget``.
* **CUDA**: the exact tensor-memory estimate (FakeTensor) of the heaviest model stays within :data:`GPU_MEMORY_SHARE`
  of the GPU's memory (allocator overhead and cuDNN workspaces take the rest).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch

from segbench.config import RunConfig, TrainConfig
from segbench.geometry import CaseGeometry, oversized_patch_warning

__all__ = ["fit_patch_to_memory", "fit_patch_to_time", "patch_warnings"]

#: Training seconds per job a CPU suggestion aims at, at the run's --iterations.
CPU_JOB_TRAIN_S = 600.0
#: Steps a CPU suggestion must leave within a --time-budget.
MIN_ITERATIONS = 100
#: Share of the GPU's memory the tensors of one training step may take.
GPU_MEMORY_SHARE = 0.8


def median_shape(geometry: Sequence[CaseGeometry]) -> tuple[int, ...] | None:
    """Per-axis median (lower) of the prepared shapes."""
    if not geometry:
        return None
    return tuple(int(statistics.median_low(axis)) for axis in zip(*(case.shape for case in geometry), strict=True))


def fit_patch_to_time(median: Sequence[int], *, divisor: int, seconds_per_voxel: float, step_budget_s: float):
    """The largest planned patch whose step, at ``seconds_per_voxel`` (per patch voxel, the batch included), takes at
    most ``step_budget_s``."""
    from segbench.runner import PATCH_VOXEL_BUDGET, plan_patch

    voxels = step_budget_s / seconds_per_voxel if seconds_per_voxel > 0 else PATCH_VOXEL_BUDGET
    return plan_patch(median, divisor=divisor, max_voxels=int(min(PATCH_VOXEL_BUDGET, voxels)))


def fit_patch_to_memory(
    median: Sequence[int], *, divisor: int, peak_mb: Callable[[tuple[int, ...]], float], limit_mb: float
) -> tuple[tuple[int, ...], float]:
    """The largest planned patch whose ``peak_mb(patch)`` is at most ``limit_mb``, and that peak.

    Memory is close to linear in the patch's voxels: two estimates (the smallest patch, the 128³ plan) give the line,
    the line gives a voxel budget, and exact estimates confirm it, shrinking while it does not fit.
    """
    from segbench.runner import PATCH_VOXEL_BUDGET, plan_patch

    large = plan_patch(median, divisor=divisor)
    small = tuple(divisor for _ in median)
    high, low = peak_mb(large), peak_mb(small)
    if high <= limit_mb:
        return large, high
    slope = (high - low) / max(1, math.prod(large) - math.prod(small))
    voxels = min(PATCH_VOXEL_BUDGET, int((limit_mb - low) / slope) + math.prod(small)) if slope > 0 else 0
    patch, peak = small, low
    for _ in range(6):
        candidate = plan_patch(median, divisor=divisor, max_voxels=max(voxels, math.prod(small)))
        peak = peak_mb(candidate)
        if peak <= limit_mb or candidate == small:
            return candidate, peak
        voxels = int(math.prod(candidate) * 0.85)
    return patch, peak


def patch_warnings(
    config: RunConfig,
    *,
    geometry: Sequence[CaseGeometry],
    models: Sequence[str],
    divisor: int,
    device: str,
    channels: tuple[int, int],
    planned: bool,
) -> list[str]:
    """Warnings about the run's patch: larger than an image (always), and with ``planned`` (a new run without
    ``--patch``) a default patch far smaller than the images, with a suggestion that fits ``device``."""
    patch = tuple(int(s) for s in config.train.patch_size)
    warnings = [oversized_patch_warning(geometry, patch)]
    median = median_shape(geometry)
    if planned and median and patch == TrainConfig().patch_size and math.prod(patch) * 8 <= math.prod(median):
        warnings.append(_small_patch_warning(config, median, models, divisor, device, channels))
    return [warning for warning in warnings if warning]


def _small_patch_warning(config: RunConfig, median: tuple[int, ...], models: Sequence[str], divisor: int,
                         device: str, channels: tuple[int, int]) -> str | None:  # fmt: skip
    from segbench.runner import warn_small_patch

    base = warn_small_patch(config, median, divisor)
    if base is None or device == "auto":  # Slurm: the device is only known where the jobs run
        return base
    try:
        fit = _fit_cuda(config, median, models, divisor, device, channels) if torch.device(device).type == "cuda" \
            else _fit_cpu(config, median, models, divisor, channels)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the job reports a broken model; the suggestion is optional
        return f"{base} (no device-fitted suggestion: {type(exc).__name__}: {exc})"
    return f"{base}. {fit}"


def _fit_cpu(config: RunConfig, median, models, divisor: int, channels: tuple[int, int]) -> str:
    from segbench.estimate import measure_step_seconds

    patch = tuple(int(s) for s in config.train.patch_size)
    steps = {name: measure_step_seconds(name, config=config, in_channels=channels[0], out_channels=channels[1],
                                        device="cpu") for name in models}  # fmt: skip
    slowest = max(steps, key=steps.get)
    per_voxel = steps[slowest] / math.prod(patch)
    budget = config.train.time_budget_s
    if budget is None:
        step_budget, aim = (
            CPU_JOB_TRAIN_S / config.train.iterations,
            (f"keeps a job's {config.train.iterations} iterations within {CPU_JOB_TRAIN_S / 60:.0f} min"),
        )
    else:
        step_budget, aim = (
            budget / MIN_ITERATIONS,
            f"leaves {MIN_ITERATIONS} iterations within --time-budget {budget:g}",
        )
    fitted = fit_patch_to_time(median, divisor=divisor, seconds_per_voxel=per_voxel, step_budget_s=step_budget)
    return (
        f"On this CPU one {slowest} step at {'x'.join(map(str, patch))} takes {steps[slowest]:.3g} s (measured); the "
        f"largest planned patch that {aim} is --patch {' '.join(map(str, fitted))} (about "
        f"{per_voxel * math.prod(fitted):.2g} s a step)"
    )


def _fit_cuda(config: RunConfig, median, models, divisor: int, device: str, channels: tuple[int, int]) -> str:
    from segbench.memory import estimate_memory
    from segbench.precision import resolve_memory_format, resolve_precision

    train = config.train
    numerics = {"precision": resolve_precision(train.precision, device),
                "memory_format": resolve_memory_format(train.memory_format, device)}  # fmt: skip

    def peak_mb(patch: tuple[int, ...]) -> float:
        table = estimate_memory(list(models), patch_size=patch, batch_size=train.batch_size, optimizer=train.optimizer,
                                in_channels=channels[0], out_channels=channels[1], **numerics)  # fmt: skip
        return float(table["tensor_peak_mb"].max())

    total_mb = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20
    limit = GPU_MEMORY_SHARE * total_mb
    fitted, peak = fit_patch_to_memory(median, divisor=divisor, peak_mb=peak_mb, limit_mb=limit)
    return (
        f"On this GPU ({total_mb / 1024:.0f} GiB) the largest planned patch whose estimated peak tensor memory fits "
        f"{GPU_MEMORY_SHARE:.0%} of it ({limit:,.0f} MiB, batch {train.batch_size}, {numerics['precision']}) is "
        f"--patch {' '.join(map(str, fitted))} ({peak:,.0f} MiB for the heaviest model)"
    )
