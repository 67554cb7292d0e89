"""A patch fitted to the models being compared: nnU-Net's spacing and aspect rules, segbench's exact memory.

nnU-Net sizes its patch for its own U-Net through a proxy (summed feature-map elements, :mod:`segbench.plans.vram`)
compared with a hand-tuned reference value. :func:`fit_plan` keeps everything nnU-Net decides about the data
(spacing, transposition, normalization, the starting patch and the order in which axes shrink) but accepts a patch
only when **every listed model's** training step fits the memory budget, by segbench's FakeTensor estimate
(:func:`segbench.memory.training_step_memory`: exact live-tensor bytes of forward, loss, backward and optimiser step,
nothing allocated). Then it takes the largest batch (at least 2, at most nnU-Net's dataset-coverage cap) at which
every model still fits.

Exact estimates take about a second each, so the search predicts from the last exact estimate (activation memory
grows in proportion to voxels and batch; weights, gradients and optimiser state do not) and checks every candidate it
accepts exactly. Patch sides are multiples of the models' common divisor and of nnU-Net's pooling divisor, so the
plans file's topology still fits the patch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segbench.errors import ConfigError
from segbench.memory import StepMemory, training_step_memory
from segbench.plans.axes import configuration_to_array_axes
from segbench.plans.planner import ConfigurationPlan, ExperimentPlan, feature_map_size, initial_patch_size
from segbench.plans.topology import Topology, pool_and_conv_props

log = logging.getLogger(__name__)

_MIB_PER_GB = 1024  # --gpu-memory is in GiB (2**30 bytes), as GPU memory is quoted
_MAX_BATCH = 1024


@dataclass(frozen=True)
class FitResult:
    """The fitted 3d_fullres configuration and what each model needs at it.

    Attributes:
        plan: the plan with ``3d_fullres`` replaced by the fitted patch, topology and batch size.
        memory: per model, the exact training-step estimate at the fitted patch and batch (MiB parts).
        budget_mb: the budget in MiB.
        precision: the precision the estimates were made for.
        nnunet_patch, nnunet_batch: what nnU-Net's heuristic chose for comparison.
        estimates: exact estimates made during the search (per model).
        batch_cap: nnU-Net's dataset-coverage cap on the batch size at the fitted patch (at least 2).
    """

    plan: ExperimentPlan
    memory: dict[str, StepMemory]
    budget_mb: float
    precision: str
    nnunet_patch: tuple[int, ...]
    nnunet_batch: int
    estimates: int
    batch_cap: int


@dataclass(frozen=True)
class _Models:
    """Measures every model at a patch given in the plan's (transposed) axis order."""

    names: tuple[str, ...]
    in_channels: int
    out_channels: int
    precision: str
    memory_format: str
    optimizer: str
    transpose_backward: tuple[int, ...]

    def measure(self, patch: Sequence[int], batch: int) -> dict[str, StepMemory]:
        patch = tuple(int(p) for p in configuration_to_array_axes(patch, self.transpose_backward))
        out = {}
        for name in self.names:
            try:
                out[name] = training_step_memory(name, in_channels=self.in_channels, out_channels=self.out_channels,
                                                 patch_size=patch, batch_size=batch,
                                                 precision=self.precision, memory_format=self.memory_format,
                                                 optimizer=self.optimizer, fake=True)  # fmt: skip
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                raise ConfigError(f"--fit: cannot estimate the memory of {name} at patch {patch}: {exc}") from None
        return out


def fit_plan(
    plan: ExperimentPlan,
    models: Sequence[str],
    *,
    gpu_memory_gb: float,
    precision: str = "fp32",
    memory_format: str = "channels_last",
    optimizer: str = "adam",
) -> FitResult:
    """Refit ``plan``'s 3d_fullres patch and batch size to ``models`` within ``gpu_memory_gb`` GiB.

    Args:
        plan: an nnU-Net plan (:func:`segbench.plans.plan_dataset`).
        models: registry names.
        gpu_memory_gb: the budget for one training step's tensors, GiB.
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast as segbench trains).
        memory_format, optimizer: as :func:`segbench.memory.training_step_memory`.

    Raises:
        ConfigError: no 3d_fullres configuration, a model cannot be estimated, or even the smallest patch at batch
            size 2 does not fit (the message names the model and its need).
        ModelError: unknown model.
    """
    from segbench.job import out_channels_for
    from segbench.registry import model_info

    if "3d_fullres" not in plan.configurations:
        raise ConfigError("--fit needs a 3d_fullres configuration, but this dataset's median image is 2D")
    config = plan.configurations["3d_fullres"]
    out_channels = out_channels_for(tuple(range(1, plan.num_classes)))
    names = tuple(models)
    divisor = math.lcm(*(model_info(n, in_channels=len(plan.channel_names), out_channels=out_channels).divisor
                         for n in names))  # fmt: skip
    runner = _Models(
        names, len(plan.channel_names), out_channels, precision, memory_format, optimizer, plan.transpose_backward
    )
    budget = gpu_memory_gb * _MIB_PER_GB
    topology, memory, count = _fit_patch(runner, config, divisor, budget)
    n_voxels = float(np.prod(config.median_shape, dtype=np.float64)) * len(plan.fingerprint.spacings)
    cap = round(n_voxels * plan.preset.max_dataset_covered / np.prod(topology.patch_size, dtype=np.float64))
    cap = max(cap, 2)
    batch, memory, more = _fit_batch(runner, topology.patch_size, memory, budget, cap)
    fitted = _configuration(plan, config, topology, batch)
    return FitResult(
        plan=dataclasses.replace(plan, configurations={**plan.configurations, "3d_fullres": fitted}),
        memory=memory,
        budget_mb=budget,
        precision=precision,
        nnunet_patch=config.patch_size,
        nnunet_batch=config.batch_size,
        estimates=count + more,
        batch_cap=cap,
    )


def aligned_topology(spacing: Sequence[float], patch: Sequence[float], divisor: int) -> Topology:
    """nnU-Net's topology for ``patch``, with every side padded to a multiple of its pooling divisor and ``divisor``."""
    topology = pool_and_conv_props(spacing, patch)
    for _ in range(8):  # padding can add a pooling (and so a larger divisor); settles within a few rounds
        units = [math.lcm(divisor, d) for d in topology.divisible_by]
        padded = tuple(int(math.ceil(p / u) * u) for p, u in zip(topology.patch_size, units, strict=True))
        again = pool_and_conv_props(spacing, padded)
        if again.patch_size == padded:
            return again
        topology = again
    return topology


def _fit_patch(runner: _Models, config: ConfigurationPlan, divisor: int, budget: float):
    spacing, median = config.spacing, config.median_shape
    topology = aligned_topology(spacing, initial_patch_size(spacing, median), divisor)
    memory, count = runner.measure(topology.patch_size, 2), 1
    while _peak(memory) > budget:
        reference, ref_voxels = memory, math.prod(topology.patch_size)
        while True:  # shrink on prediction until every model should fit, then check exactly
            smaller = _shrink(spacing, topology, median, divisor)
            if smaller is None:
                worst = max(memory, key=lambda n: memory[n].peak_mb)
                raise ConfigError(
                    f"--gpu-memory {budget / _MIB_PER_GB:g}: {worst} needs {memory[worst].peak_mb:,.0f} MiB at the "
                    f"smallest patch {list(topology.patch_size)} with batch size 2; give more memory or leave it out"
                )
            topology = smaller
            scale = math.prod(topology.patch_size) / ref_voxels
            if max(_predict(m, scale) for m in reference.values()) <= budget:
                break
        memory, count = runner.measure(topology.patch_size, 2), count + 1
    return topology, memory, count


def _fit_batch(runner: _Models, patch: Sequence[int], at_two: dict[str, StepMemory], budget: float, cap: int):
    per_sample = {n: (m.peak_mb - _fixed(m)) / 2 for n, m in at_two.items()}
    guess = min(int((budget - _fixed(at_two[n])) // max(per_sample[n], 1e-9)) for n in at_two)
    batch, limit, count = max(2, min(guess, cap, _MAX_BATCH)), min(cap, _MAX_BATCH), 0
    memory = at_two
    if batch > 2:
        memory, count = runner.measure(patch, batch), 1
    if _peak(memory) <= budget:  # the prediction fits: go up while the next batch still fits
        while batch < limit:
            trial, count = runner.measure(patch, batch + 1), count + 1
            if _peak(trial) > budget:
                break
            batch, memory = batch + 1, trial
        return batch, memory, count
    while batch > 2:  # it does not: go down until it does (batch 2 is known to fit)
        batch -= 1
        memory, count = (at_two, count) if batch == 2 else (runner.measure(patch, batch), count + 1)
        if _peak(memory) <= budget:
            break
    return batch, memory, count


def _shrink(spacing, topology: Topology, median, divisor: int) -> Topology | None:
    # nnU-Net's order: the axis largest relative to the median shape loses one unit; axes at one unit are skipped.
    patch = list(topology.patch_size)
    units = [math.lcm(divisor, d) for d in topology.divisible_by]
    ratios = [p / m if p > u else -1.0 for p, m, u in zip(patch, median, units, strict=True)]
    if max(ratios) < 0:
        return None
    axis = int(np.argsort(ratios)[-1])
    patch[axis] -= units[axis]
    return aligned_topology(spacing, patch, divisor)


def _fixed(memory: StepMemory) -> float:
    # What does not grow with voxels or batch: weights, their gradients, optimiser state, buffers.
    return memory.parameters_mb + memory.gradients_mb + memory.optimizer_mb + memory.buffers_mb


def _predict(memory: StepMemory, scale: float) -> float:
    return _fixed(memory) + (memory.peak_mb - _fixed(memory)) * scale


def _peak(memory: dict[str, StepMemory]) -> float:
    return max(m.peak_mb for m in memory.values())


def _configuration(plan: ExperimentPlan, config: ConfigurationPlan, topology: Topology, batch: int):
    estimate, features, enc, dec = feature_map_size(plan.preset, topology, num_classes=plan.num_classes,
                                                    max_features=plan.preset.max_features_3d)  # fmt: skip
    return dataclasses.replace(config, topology=topology, features=features, blocks_encoder=enc,
                               blocks_decoder=dec, batch_size=batch, estimate=estimate)  # fmt: skip
