"""Compute-matched comparisons: scale every width/depth family member to the cost of one reference model.

A bigger network often wins only because it is bigger. ``segbench run --match flops|params|memory --match-to REF``
replaces every selected *family member* (a name that states its width, ``unet_w20_d4``; see
:func:`segbench.registry.family_member`) by the member of the same family and depth whose width brings its cost
closest to the reference's:

* ``flops``: MFLOP per voxel of one training step (forward + backward, :func:`segbench.registry.model_info`);
* ``params``: learnable parameters;
* ``memory``: peak tensor memory of one training step at the run's patch, batch size, precision, memory format and
  optimiser, estimated without allocating (:func:`segbench.memory.training_step_memory` with ``fake=True``).

Fixed models (``unet``, ``fcn``, MONAI networks, plugins without a family) are run as they are and flagged. The
width search (:func:`closest_width`) needs a handful of cost evaluations: power-law steps towards the target, then a
walk to the neighbour that is closer until none is, so the result is the closest valid width wherever the cost rises
with the width (as it does for every built-in family), and a local optimum otherwise. A member whose closest width
still misses the target by more than :data:`MAX_DEVIATION` is refused, naming the nearest width.

The outcome, :class:`Matching`, goes into ``manifest.json`` (``"matching"``); the resolved names are what is trained.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from segbench.config import RunConfig
from segbench.errors import ConfigError, ModelError
from segbench.precision import resolve_memory_format, resolve_precision
from segbench.registry import Knob, family_member, model_info

__all__ = [
    "MATCH_MEASURES",
    "MAX_DEVIATION",
    "CostContext",
    "MatchedModel",
    "Matching",
    "closest_width",
    "match_models",
    "match_run",
    "measure_label",
    "measure_unit",
    "model_cost",
]

log = logging.getLogger(__name__)

MATCH_MEASURES = ("flops", "params", "memory")
MAX_DEVIATION = 0.25  # a member farther than this from the target (relative) is refused

# measure -> (what it is called in sentences, unit, jobs.csv / leaderboard column holding it)
_MEASURES = {
    "flops": ("FLOPs", "MFLOP/voxel", "mflop_per_voxel"),
    "params": ("parameters", "parameters", "params"),
    "memory": ("peak tensor memory", "MiB", "tensor_peak_mb"),
}


def measure_label(measure: str) -> str:
    """``"FLOPs"``, ``"parameters"`` or ``"peak tensor memory"``, as in "at matched FLOPs (±3.1%)"."""
    return _MEASURES[measure][0]


def measure_unit(measure: str) -> str:
    """``"MFLOP/voxel"``, ``"parameters"`` or ``"MiB"``."""
    return _MEASURES[measure][1]


@dataclass(frozen=True)
class CostContext:
    """What a cost depends on besides the model: channels, and for ``memory`` the run's training step."""

    in_channels: int = 1
    out_channels: int = 1
    patch_size: tuple[int, int, int] = (32, 32, 24)
    batch_size: int = 2
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    memory_format: str = "contiguous"  # resolved: channels_last or contiguous
    optimizer: str = "adam"
    device: str = "cpu"  # whose autocast op lists the memory estimate follows ("cuda:0" and "cuda" alike)


def model_cost(name: str, measure: str, context: CostContext) -> float:
    """The cost of model ``name``: MFLOP/voxel of a training step, parameters, or peak tensor MiB of a step.

    Raises:
        ConfigError: unknown ``measure``, or the model's cost cannot be computed (e.g. its forward pass fails).
        ModelError: unknown model.
    """
    if measure not in MATCH_MEASURES:
        raise ConfigError(f"--match must be one of {', '.join(MATCH_MEASURES)} (got {measure!r})")
    if measure == "memory":
        return _peak_tensor_mb(name, context)
    info = model_info(name, in_channels=context.in_channels, out_channels=context.out_channels)
    value = float(info.params) if measure == "params" else info.mflop_per_voxel_train
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"--match {measure}: cannot count the {measure_label(measure)} of {name}; choose another model"
        )
    return value


@functools.cache
def _peak_tensor_mb(name: str, context: CostContext) -> float:
    # Cached: matching several members of one family and depth evaluates the same widths again.
    from segbench.memory import training_step_memory

    divisor = model_info(name, in_channels=context.in_channels, out_channels=context.out_channels).divisor
    if any(int(side) % divisor for side in context.patch_size):
        raise ConfigError(
            f"--match memory: --patch {' '.join(map(str, context.patch_size))} does not suit {name}, whose input "
            f"sizes must be divisible by {divisor}; choose a patch whose sides are multiples of {divisor}"
        )
    try:
        return training_step_memory(name, **asdict(context), fake=True).peak_mb
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model whose step fails cannot be matched; say which
        raise ConfigError(
            f"--match memory: cannot estimate the memory of {name} at --patch "
            f"{' '.join(map(str, context.patch_size))} ({type(exc).__name__}: {exc}); choose another model"
        ) from None


def closest_width(cost: Callable[[int], float], target: float, knob: Knob, *, start: int) -> tuple[int, float]:
    """The valid width of ``knob`` whose ``cost(width)`` is closest to ``target`` (ties: the smaller width).

    Steps towards the target assuming ``cost ∝ width**k`` (``k`` re-estimated from the last two evaluations, 2 at
    first), then walks to a neighbouring valid width while that is closer. Exact wherever the cost rises with the
    width; otherwise a local optimum. Each width is evaluated at most once.

    Args:
        cost: positive, finite cost of a width.
        target: positive target cost.
        knob: the valid widths.
        start: first width tried (clamped into the knob).

    Returns:
        ``(width, cost(width))``.
    """
    values = knob.values()
    seen: dict[int, float] = {}

    def at(index: int) -> float:
        if index not in seen:
            seen[index] = cost(values[index])
        return seen[index]

    def nearest(width: float) -> int:
        return min(max(round((width - knob.low) / knob.step), 0), len(values) - 1)

    index, previous, exponent = nearest(start), None, 2.0
    for _ in range(12):
        if previous is not None and at(previous) != at(index):
            # Only a rising cost gives a usable exponent; keep the last one otherwise.
            slope = math.log(at(index) / at(previous)) / math.log(values[index] / values[previous])
            exponent = min(max(slope, 0.25), 4.0) if slope > 0 else exponent
        guess = nearest(values[index] * (target / at(index)) ** (1 / exponent))
        if guess in seen:
            break
        previous, index = index, guess
        at(index)

    def key(i: int) -> tuple[float, int]:
        return abs(at(i) - target), i

    best = min(seen, key=key)
    while True:
        neighbours = [i for i in (best - 1, best + 1) if 0 <= i < len(values)]
        closer = min([best, *neighbours], key=key)
        if closer == best:
            return values[best], at(best)
        best = closer


@dataclass(frozen=True)
class MatchedModel:
    """One selected model: what was asked for, what is trained, and its cost against the target.

    Attributes:
        requested: the name given in ``--models``.
        model: the name trained and shown (the requested one when not matched).
        matched: False for a model without a width knob (run as it is).
        cost: its cost in the measure's unit.
        deviation: ``(cost - target) / target``.
        costs: its cost in every measure (NaN where it cannot be computed), for the report's cost table.
    """

    requested: str
    model: str
    matched: bool
    cost: float
    deviation: float
    costs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Matching:
    """The outcome of ``--match``: measure, reference, target cost and each selected model (manifest ``matching``)."""

    measure: str
    reference: str
    target: float
    unit: str
    context: CostContext
    models: tuple[MatchedModel, ...]

    @property
    def resolved(self) -> list[str]:
        """Names to train, in the requested order, without repeats."""
        return list(dict.fromkeys(m.model for m in self.models))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN costs become None)."""
        context = asdict(self.context)
        context["patch_size"] = list(context["patch_size"])
        models = [
            asdict(m) | {"costs": {k: v if math.isfinite(v) else None for k, v in m.costs.items()}} for m in self.models
        ]
        return {
            "measure": self.measure,
            "reference": self.reference,
            "target": self.target,
            "unit": self.unit,
            "max_deviation": MAX_DEVIATION,
            "context": context,
            "models": models,
        }


def match_models(models: Sequence[str], *, measure: str, reference: str, context: CostContext) -> Matching:
    """Replace every family member in ``models`` by the width of its family and depth closest to ``reference``'s cost.

    Args:
        models: resolved model names (``--models``), in order.
        measure: ``"flops"``, ``"params"`` or ``"memory"``.
        reference: any buildable model (``--match-to``); it need not be among ``models`` nor have a width knob.
        context: channels, and for ``memory`` the run's training step.

    Returns:
        The :class:`Matching`; ``matching.resolved`` are the names to train.

    Raises:
        ConfigError: unknown measure, a cost that cannot be computed, or a member whose closest width misses the
            target by more than :data:`MAX_DEVIATION` (the message names the nearest width).
        ModelError: unknown reference.
    """
    try:
        target = model_cost(reference, measure, context)
    except ModelError as exc:
        raise ModelError(f"--match-to {reference}: {exc}") from None
    matched = [_match_one(name, measure=measure, reference=reference, target=target, context=context)
               for name in models]  # fmt: skip
    matched = [replace(m, costs=_all_costs(m.model, context)) for m in matched]
    matching = Matching(measure, reference, target, measure_unit(measure), context, tuple(matched))
    for m in matching.models:
        note = f"{m.requested} -> {m.model}" if m.matched else f"{m.requested} (no width knob: not matched)"
        log.info("--match %s to %s (%.4g %s): %s, %+.1f%%", measure, reference, target, matching.unit, note,
                 100 * m.deviation)  # fmt: skip
    return matching


def _all_costs(name: str, context: CostContext) -> dict[str, float]:
    """The model's cost in every measure; NaN where one cannot be computed (it is only shown in the report)."""
    costs = {}
    for measure in MATCH_MEASURES:
        try:
            costs[measure] = model_cost(name, measure, context)
        except ConfigError as exc:
            log.info("%s", exc)
            costs[measure] = math.nan
    return costs


def _match_one(name: str, *, measure: str, reference: str, target: float, context: CostContext) -> MatchedModel:
    member = family_member(name)
    if member is None:
        cost = model_cost(name, measure, context)
        return MatchedModel(name, name, False, cost, (cost - target) / target)

    def cost_of(width: int) -> float:
        return model_cost(member.with_width(width), measure, context)

    width, cost = closest_width(cost_of, target, member.spec.width, start=member.width)
    deviation = (cost - target) / target
    if abs(deviation) > MAX_DEVIATION:
        knob = member.spec.width
        raise ConfigError(
            f"--match {measure} --match-to {reference}: no width of {member.spec.name}_w{{W}}_d{member.depth} "
            f"(W {knob.describe()}) gets within {MAX_DEVIATION:.0%} of {reference}'s {target:.4g} "
            f"{measure_unit(measure)}; the nearest is {member.with_width(width)} at {cost:.4g} ({deviation:+.0%}); "
            "choose another depth, model or --match-to"
        )
    return MatchedModel(name, member.with_width(width), True, cost, deviation)


def torch_device_type(device: str) -> str:
    """``"cuda:1"`` → ``"cuda"``: the memory estimate depends on the device type only (one cache entry for all GPUs)."""
    return device.partition(":")[0]


def match_run(config: RunConfig, models: Sequence[str], *, in_channels: int, out_channels: int,
              device: str) -> Matching | None:  # fmt: skip
    """The matching a run asks for (``config.match`` / ``config.match_to``), or None without ``--match``.

    ``memory`` is estimated at the run's patch, batch size, optimiser and the precision and memory format the jobs
    resolve on ``device`` (``auto`` = CUDA when this machine has it, else the CPU).
    """
    if config.match is None:
        return None
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    train = config.train
    context = CostContext(
        in_channels=in_channels,
        out_channels=out_channels,
        patch_size=tuple(int(s) for s in train.patch_size),
        batch_size=train.batch_size,
        precision=resolve_precision(getattr(train, "precision", "auto"), device),
        memory_format=resolve_memory_format(getattr(train, "memory_format", "auto"), device),
        optimizer=train.optimizer,
        device=torch_device_type(device),
    )
    return match_models(models, measure=config.match, reference=str(config.match_to), context=context)
