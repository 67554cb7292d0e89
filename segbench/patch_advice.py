"""Patch warnings that fit the device: a suggestion a CPU can train in reasonable time or a GPU can hold, and a warning
when the patch is larger than an image.

nnU-Net-style planning (:func:`plan_patch`: the largest multiple of the models' divisor within the
median image and 128³ voxels) suits a large GPU. The suggestion made here is the largest planned patch that also fits
this run's device:

* **CPU**: one training step of the slowest model, measured here at the run's patch and scaled by voxels (convolution
  cost grows linearly with them), keeps a job's training within :data:`CPU_JOB_TRAIN_S` seconds at ``--iterations``,
  or leaves at least :data:`MIN_ITERATIONS` steps within ``--time-budget``.
* **CUDA**: the exact tensor-memory estimate (FakeTensor) of the heaviest model stays within :data:`GPU_MEMORY_SHARE`
  of the GPU's memory (allocator overhead and cuDNN workspaces take the rest).

A plan fixes the patch for every model of a run: :func:`check_patch_fits` refuses a model whose input divisor does not
divide it, naming the nearest patch that fits (:func:`nearest_fitting_patch`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch

from segbench.config import RunConfig, TrainConfig
from segbench.errors import ConfigError
from segbench.geometry import CaseGeometry, oversized_patch_warning

__all__ = [
    "check_patch_fits",
    "fit_patch_to_memory",
    "fit_patch_to_time",
    "model_divisors",
    "nearest_fitting_patch",
    "patch_misfits",
    "patch_warnings",
]

#: Training seconds per job a CPU suggestion aims at, at the run's --iterations.
CPU_JOB_TRAIN_S = 600.0
#: Steps a CPU suggestion must leave within a --time-budget.
MIN_ITERATIONS = 100
#: Share of the GPU's memory the tensors of one training step may take.
GPU_MEMORY_SHARE = 0.8


# nnU-Net-like patch planning budget: voxels of one patch (128³, what a 3D full-resolution nnU-Net plans on a GPU).
PATCH_VOXEL_BUDGET = 128**3


def plan_patch(median_shape: Sequence[int], *, divisor: int, max_voxels: int = PATCH_VOXEL_BUDGET) -> tuple[int, ...]:
    """The largest patch whose sides are multiples of ``divisor``, within ``median_shape`` and ``max_voxels``.

    Starts from the median image shape rounded down to the divisor (at least one divisor per side) and shrinks the
    longest side by one divisor until the patch fits the budget, like nnU-Net's planner.
    """
    patch = [max(divisor, int(side) // divisor * divisor) for side in median_shape]
    while math.prod(patch) > max_voxels and max(patch) > divisor:
        longest = max(range(len(patch)), key=lambda axis: patch[axis])
        patch[longest] -= divisor
    return tuple(patch)


def nearest_fitting_patch(patch: Sequence[int], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each side of ``patch`` moved to the nearest multiple of its divisor, at least one divisor (a tie goes to the
    smaller side: a plan's patch was sized to fit the GPU's memory).

    Example: ``nearest_fitting_patch((40, 100, 100), (16, 16, 16))`` -> ``(32, 96, 96)``.
    """
    fitted = []
    for side, divisor in zip(patch, divisors, strict=True):
        lower = max(divisor, int(side) // divisor * divisor)
        upper = max(divisor, -(-int(side) // divisor) * divisor)
        fitted.append(lower if int(side) - lower <= upper - int(side) else upper)
    return tuple(fitted)


def model_divisors(
    models: Sequence[str], *, plan=None, in_channels: int = 1, out_channels: int = 1, ndim: int = 3
) -> dict[str, tuple[int, ...]]:
    """Per model, what each input size must be a multiple of, per axis (:func:`segbench.registry.input_divisors`;
    ``plan``, a :class:`~segbench.plans.network.NetworkPlan`, goes to plan-built models, whose divisors come from it).

    Raises:
        ModelError: as :func:`segbench.registry.model_info` (e.g. a plan-built model without ``plan``).
    """
    from segbench.registry import input_divisors

    return {name: input_divisors(name, plan=plan, in_channels=in_channels, out_channels=out_channels, ndim=ndim)
            for name in models}  # fmt: skip


def patch_misfits(divisors: dict[str, tuple[int, ...]], patch_size: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The entries of ``divisors`` (from :func:`model_divisors`) that do not divide ``patch_size`` on some axis."""
    return {name: d for name, d in divisors.items()
            if any(int(side) % div for side, div in zip(patch_size, d, strict=True))}  # fmt: skip


def check_patch_fits(
    models: Sequence[str],
    patch_size: Sequence[int],
    *,
    plan=None,
    in_channels: int = 1,
    out_channels: int = 1,
    source: str = "the plan's patch",
) -> None:
    """Refuse a patch that some model's input divisor does not divide, naming the nearest patch that fits them all.

    Args:
        models: registry names.
        patch_size: the run's patch (array axis order; with a plan, the plan's order, which is the same).
        plan: passed on to plan-built models (their divisors come from it).
        source: what the patch is called in the message (``"the plan's patch"``, ``"--patch"``).

    Raises:
        ConfigError: one sentence: which models need which divisors, and ``--patch`` with the nearest patch whose
            sides are multiples of every model's divisor on that axis.
        ModelError: as :func:`segbench.registry.model_info` (e.g. a plan-built model without ``plan``).
    """
    divisors = model_divisors(models, plan=plan, in_channels=in_channels, out_channels=out_channels,
                              ndim=len(patch_size))  # fmt: skip
    misfits = patch_misfits(divisors, patch_size)
    if not misfits:
        return
    common = [math.lcm(*axis) for axis in zip(*divisors.values(), strict=True)]
    nearest = nearest_fitting_patch(patch_size, common)
    needs = ", ".join(f"{name} needs multiples of {_divisors_text(d)}" for name, d in misfits.items())
    raise ConfigError(
        f"{source} {' x '.join(map(str, patch_size))} does not fit every model ({needs}); the nearest patch that fits "
        f"them all is {' x '.join(map(str, nearest))}: pass --patch {' '.join(map(str, nearest))}, or leave "
        f"{', '.join(misfits)} out"
    )


def _divisors_text(divisors: Sequence[int]) -> str:
    return str(divisors[0]) if len(set(divisors)) == 1 else f"{' x '.join(map(str, divisors))} per axis"


def warn_small_patch(config: RunConfig, median_shape: Sequence[int] | None, divisor: int) -> str | None:
    """A warning when the default patch (no ``--patch``) covers under 1/8 of the median image; else ``None``."""
    patch = tuple(config.train.patch_size)
    if not median_shape or patch != TrainConfig().patch_size or math.prod(patch) * 8 > math.prod(median_shape):
        return None
    planned = plan_patch(median_shape, divisor=divisor)
    share = math.prod(patch) / math.prod(median_shape)
    return (
        f"--patch not given: the default patch {' '.join(map(str, patch))} covers {share:.1%} of the median image "
        f"({' '.join(map(str, median_shape))} voxels); nnU-Net-style planning (largest multiple of {divisor} within "
        f"the median shape and {PATCH_VOXEL_BUDGET:,} voxels) gives --patch {' '.join(map(str, planned))}; pass "
        "--patch D H W to choose (a smaller patch trains faster but sees less context)"
    )


def median_shape(geometry: Sequence[CaseGeometry]) -> tuple[int, ...] | None:
    """Per-axis median (lower) of the prepared shapes."""
    if not geometry:
        return None
    return tuple(int(statistics.median_low(axis)) for axis in zip(*(case.shape for case in geometry), strict=True))


def fit_patch_to_time(median: Sequence[int], *, divisor: int, seconds_per_voxel: float, step_budget_s: float):
    """The largest planned patch whose step, at ``seconds_per_voxel`` (per patch voxel, the batch included), takes at
    most ``step_budget_s``."""
    voxels = step_budget_s / seconds_per_voxel if seconds_per_voxel > 0 else PATCH_VOXEL_BUDGET
    return plan_patch(median, divisor=divisor, max_voxels=int(min(PATCH_VOXEL_BUDGET, voxels)))


def fit_patch_to_memory(
    median: Sequence[int], *, divisor: int, peak_mb: Callable[[tuple[int, ...]], float], limit_mb: float
) -> tuple[tuple[int, ...], float]:
    """The largest planned patch whose ``peak_mb(patch)`` is at most ``limit_mb``, and that peak.

    Memory is close to linear in the patch's voxels: two estimates (the smallest patch, the 128³ plan) give the line,
    the line gives a voxel budget, and exact estimates confirm it, shrinking while it does not fit.
    """
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


def patch_source(config: RunConfig) -> str:
    """Where the run's patch came from, as messages name it."""
    return f"--plans {config.plans}: its patch" if config.plans else "--patch"


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
    warnings = [oversized_patch_warning(geometry, patch, source=patch_source(config))]
    median = median_shape(geometry)
    if planned and median and patch == TrainConfig().patch_size and math.prod(patch) * 8 <= math.prod(median):
        warnings.append(_small_patch_warning(config, median, models, divisor, device, channels))
    return [warning for warning in warnings if warning]


def _small_patch_warning(config: RunConfig, median: tuple[int, ...], models: Sequence[str], divisor: int,
                         device: str, channels: tuple[int, int]) -> str | None:  # fmt: skip
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
