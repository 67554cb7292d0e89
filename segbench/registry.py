"""The model registry: named builders, width/depth families, entry-point plugins, parameter and FLOP counts.

A *builder* is a callable ``builder(*, in_channels, out_channels, **options) -> nn.Module`` whose module maps
(B, C_in, D, H, W) to logits (B, C_out, D, H, W). Each model declares a *divisor*: every input size must be a
multiple of it (padding happens in data loading / inference, never inside a model).

Three sources of models:

* built-ins, registered with :func:`register_model` in ``segbench.models`` (imported on first use);
* families registered with :func:`register_family`: any ``{family}_w{W}_d{D}`` name builds without being
  registered (divisor ``2**D``) while ``W`` and ``D`` lie in the family's declared :class:`Knob` ranges; the
  family's default grid is listed. :func:`family_member` tells matching (:mod:`segbench.matching`) which names
  have a width knob;
* plugins: installed distributions declare entry points in the group ``segbench.models`` without importing
  segbench. Convention: the entry point *name* is the model name and its *object* is the builder; optional
  attributes on the builder: ``segbench_divisor`` (int, default 1) and ``segbench_family`` (str, default the
  model name). Example ``pyproject.toml`` of a plugin::

      [project.entry-points."segbench.models"]
      mynet = "mypackage.nets:build_mynet"

  Plugins are listed from their metadata alone and imported only when a model is built or described, so a
  broken plugin fails only when used, with a :class:`~segbench.errors.ModelError` naming the distribution.
  ``SEGBENCH_DISABLE_PLUGINS=1`` turns plugins off.

  A plugin builder that declares ``segbench_width`` and ``segbench_depth`` (each ``(keyword, min, max)`` or
  ``(keyword, min, max, step)``: the builder keyword and its valid integer values) is a *family*: the entry-point
  name is the family name, ``{name}_w{W}_d{D}`` builds with those keywords set, and ``{name}`` alone builds with
  the builder's defaults. Optional ``segbench_grid`` (``(width, depth)`` pairs) names the members listed once the
  plugin is imported (``segbench models`` does).

Plan-built models and deep supervision: a model registered with ``needs_plan=True`` (nnU-Net's networks) is built
from a plan, ``builder(*, in_channels, out_channels, plan, deep_supervision, **options)`` with ``plan`` a
:class:`~segbench.plans.network.NetworkPlan`; :func:`build_model` refuses it without one. A model registered with
``deep_supervision=True`` can return deep-supervision outputs: built with ``deep_supervision=True``, its forward pass in
training mode returns a list of logits, full resolution first, each (B, C_out, *spatial / per-axis downsampling), and
in eval mode the full-resolution (B, C_out, D, H, W) logits alone (:func:`has_deep_supervision` says which models can).
A built module may declare per-axis divisors as ``segbench_axis_divisors`` (a plan-built network's depend on the plan);
:func:`model_info` reports them.

Errors: a duplicate name, an unknown name (the message lists the choices), a pattern matching nothing, bad
builder options, broken plugins and a plan-built model without a plan all raise :class:`~segbench.errors.ModelError`.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import fnmatch
import functools
import importlib
import importlib.metadata
import inspect
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from segbench.errors import ModelError
from segbench.profiling import count_parameters, flop_probe_side, measure_flops

if TYPE_CHECKING:
    from segbench.plans.network import NetworkPlan

__all__ = [
    "ENTRY_POINT_GROUP",
    "FamilyMember",
    "FamilySpec",
    "Knob",
    "ModelInfo",
    "build_model",
    "builder_module",
    "families",
    "family_member",
    "has_deep_supervision",
    "input_divisors",
    "needs_plan",
    "list_models",
    "describe_model",
    "model_info",
    "network_plan_scope",
    "plugins_disabled",
    "refresh_plugins",
    "register_family",
    "register_model",
    "resolve_models",
    "unavailable_models",
    "unregister_model",
    "declare_unavailable",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "segbench.models"
DISABLE_PLUGINS_ENV = "SEGBENCH_DISABLE_PLUGINS"

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What a model costs, for one choice of input/output channels.

    Attributes:
        name: registry name, e.g. ``"unet_w20_d2"``.
        family: architecture family, e.g. ``"unet"``.
        source: who provides it: ``"segbench"``, ``"monai"`` or a plugin's distribution name.
        params: number of learnable parameters.
        divisor: every input size must be a multiple of this.
        mflop_per_voxel_forward: MFLOP (10⁶ floating-point operations, a multiply-add counts 2) per input
            voxel for one forward pass (convolutions and matrix products, as ``torch.utils.flop_counter``).
        mflop_per_voxel_train: the same for a training step (forward + backward, optimizer excluded).
        axis_divisors: per axis, what each input size must be a multiple of, when the model declares it (a plan-built
            network, from the plan's strides; ``divisor`` is then their least common multiple); None: ``divisor``.
        patch: the plan's patch the FLOPs were counted at (described with a plan whose patch fits the model); None:
            counted on the probe cube (see :func:`model_info`).
    """

    name: str
    family: str
    source: str
    params: int
    divisor: int
    mflop_per_voxel_forward: float
    mflop_per_voxel_train: float
    axis_divisors: tuple[int, ...] | None = None
    patch: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Knob:
    """An integer knob of a width/depth family: the builder keyword it sets and its valid values.

    Valid values are ``low, low + step, …`` up to ``high`` (inclusive).

    Raises:
        ModelError: at construction, if ``parameter`` is not an identifier or the range is empty.
    """

    parameter: str  # builder keyword, e.g. "width"
    low: int
    high: int
    step: int = 1

    def __post_init__(self) -> None:
        numbers = (self.low, self.high, self.step)
        if not self.parameter.isidentifier() or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in numbers
        ):
            raise ModelError(f"knob {self!r}: the parameter must be a keyword name and low, high, step integers")
        if not 1 <= self.low <= self.high or self.step < 1:
            raise ModelError(f"knob {self.parameter!r}: needs 1 <= low <= high and step >= 1 (got {self!r})")

    def values(self) -> range:
        """Every valid value, ascending."""
        return range(self.low, self.high + 1, self.step)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and value in self.values()

    def describe(self) -> str:
        """``"1–512"``, or ``"8–256 step 8"``."""
        return f"{self.low}–{self.high}" + (f" step {self.step}" if self.step > 1 else "")


@dataclass(frozen=True)
class FamilySpec:
    """A width/depth family: ``{name}_w{W}_d{D}`` builds the member with ``W`` channels and ``D`` poolings.

    Attributes:
        name: family name, e.g. ``"unet"``.
        source: ``"segbench"`` or a plugin's distribution name.
        width: knob of the channel count at full resolution (what compute matching scales).
        depth: knob of the number of poolings (the member's divisor is ``2**D``).
        grid: ``(width, depth)`` members that are listed by name.
    """

    name: str
    source: str
    width: Knob
    depth: Knob
    grid: tuple[tuple[int, int], ...] = ()

    def member(self, width: int, depth: int) -> str:
        """The member's name, e.g. ``"unet_w14_d4"``."""
        return f"{self.name}_w{width}_d{depth}"

    def check(self, width: int, depth: int) -> None:
        """Raise :class:`ModelError` naming the valid range if ``width`` or ``depth`` is outside its knob."""
        for label, knob, value in (("width", self.width, width), ("depth", self.depth, depth)):
            if value not in knob:
                raise ModelError(
                    f"model {self.member(width, depth)!r}: {label} {value} is outside the valid range "
                    f"{knob.describe()} of family {self.name}; choose a {label} in that range"
                )


@dataclass(frozen=True)
class FamilyMember:
    """A model name that is a member of a width/depth family, e.g. ``unet_w14_d4`` → (unet, 14, 4)."""

    spec: FamilySpec
    width: int
    depth: int

    @property
    def name(self) -> str:
        return self.spec.member(self.width, self.depth)

    def with_width(self, width: int) -> str:
        """The name of the member of the same family and depth with another width."""
        return self.spec.member(width, self.depth)


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    family: str
    divisor: int
    source: str
    spec: FamilySpec | None = None  # set for a plugin that declares a width/depth family
    needs_plan: bool = False  # built from a NetworkPlan (builder keyword ``plan``)
    deep_supervision: bool = False  # builder keyword ``deep_supervision``: a list of logits in training


@dataclass(frozen=True)
class _Family:
    builder: Builder  # builder(*, in_channels, out_channels, <width keyword>, <depth keyword>, **options)
    spec: FamilySpec

    @property
    def source(self) -> str:
        return self.spec.source


@dataclass(frozen=True)
class _Plugin:
    name: str
    value: str  # "module:object", for error messages
    distribution: str
    entry_point: importlib.metadata.EntryPoint


_MODELS: dict[str, _Entry] = {}
_FAMILIES: dict[str, _Family] = {}
_importing: str | None = None  # source of the user module import_user_modules is importing now
_UNAVAILABLE: dict[str, str] = {}  # optional model name -> what to install for it (see declare_unavailable)
_FAMILY_NAME = re.compile(r"^(?P<family>[a-z][a-z0-9]*)_w(?P<width>[1-9][0-9]*)_d(?P<depth>[1-9][0-9]*)$")
_builtins_loaded = False


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------


def register_model(
    name: str,
    *,
    family: str,
    divisor: int,
    source: str | None = None,
    needs_plan: bool = False,
    deep_supervision: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(*, in_channels, out_channels, **options) -> nn.Module`` as ``name``.

    Args:
        name: unique model name (used on the command line, in run directories and reports).
        family: architecture family shown in tables.
        divisor: input sizes must be multiples of it (e.g. ``2**poolings``).
        source: who provides it (``"segbench"``, ``"monai"``, or a distribution name); default: ``"segbench"``, or
            for a model registered by a module :func:`import_user_modules` imports (``--import``), the distribution
            that installed it or else the module's name.
        needs_plan: the builder takes ``plan`` (a :class:`~segbench.plans.network.NetworkPlan`) and is refused
            without one; its divisor may come from the plan (``segbench_axis_divisors`` on the built module).
        deep_supervision: the builder takes ``deep_supervision`` and then returns deep-supervision outputs (see the
            module docstring).

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ModelError: if ``name`` is already registered or ``divisor`` is not a positive integer.
    """
    if not isinstance(divisor, int) or divisor < 1:
        raise ModelError(f"model {name!r} declares divisor={divisor!r}; it must be a positive integer")

    def decorator(builder: Builder) -> Builder:
        _ensure_builtins()  # so a clash with a built-in name is reported now, not when the built-ins load
        if name in _MODELS:
            raise ModelError(f"model {name!r} is already registered (by {_MODELS[name].source}); choose another name")
        _MODELS[name] = _Entry(builder=builder, family=family, divisor=divisor,
                               source=source or _importing or "segbench", needs_plan=needs_plan,
                               deep_supervision=deep_supervision)  # fmt: skip
        describe_model.cache_clear()
        return builder

    return decorator


def register_family(
    family: str,
    *,
    grid: tuple[tuple[int, int], ...] = (),
    source: str = "segbench",
    width: Knob = Knob("width", 1, 1024),
    depth: Knob = Knob("depth", 1, 8),
) -> Callable[[Builder], Builder]:
    """Decorator registering a width/depth family: any ``{family}_w{W}_d{D}`` name builds with divisor ``2**D``.

    The decorated builder takes ``(*, in_channels, out_channels, <width.parameter>, <depth.parameter>, **options)``.
    ``width`` and ``depth`` declare the builder keywords and their valid values; a name outside them is refused,
    and compute matching (``segbench run --match``) searches the width knob. Members in ``grid`` (``(width, depth)``
    pairs) are also registered by name, so they are listed; other members build on demand without being listed.

    Raises:
        ModelError: if the family is already registered, its name is not lower-case alphanumeric, a grid member is
            outside the knobs or its name is taken.
    """
    if not re.fullmatch(r"[a-z][a-z0-9]*", family):
        raise ModelError(f"family name {family!r} must be lower-case letters and digits (it becomes {family}_w20_d2)")
    spec = FamilySpec(name=family, source=source, width=width, depth=depth, grid=tuple(grid))

    def decorator(builder: Builder) -> Builder:
        _ensure_builtins()
        if family in _FAMILIES:
            raise ModelError(f"model family {family!r} is already registered; choose another name")
        for member_width, member_depth in grid:
            spec.check(member_width, member_depth)
        _FAMILIES[family] = _Family(builder=builder, spec=spec)
        for member_width, member_depth in grid:
            member = _family_member(builder, spec, width=member_width, depth=member_depth)
            name = spec.member(member_width, member_depth)
            register_model(name, family=family, divisor=2**member_depth, source=source)(member)
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove a model registered with :func:`register_model` (e.g. one a test or notebook added).

    Raises:
        ModelError: if ``name`` is not a registered model (plugins are removed by uninstalling them).
    """
    _ensure_builtins()
    if name not in _MODELS:
        raise ModelError(f"cannot unregister {name!r}: it is not a registered model (plugins: uninstall them)")
    del _MODELS[name]
    describe_model.cache_clear()


def module_source(module: str | None) -> str:
    """Who provides code in ``module``: ``"segbench"``, the installed distribution it belongs to, or ``module``."""
    if not module or module.split(".")[0] == "segbench":
        return "segbench"
    top = module.split(".")[0]
    distributions = importlib.metadata.packages_distributions().get(top)
    return distributions[0] if distributions else module


def import_user_modules(modules: Sequence[str]) -> dict[str, str]:
    """Import modules that register models (``segbench run --import MODULE``); returns module → source.

    The current folder is searched too (as ``python -m`` does), so ``--import mymodels`` finds ``./mymodels.py``.

    Raises:
        ModelError: a module cannot be imported (names it and the error).
    """
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    global _importing
    _ensure_builtins()  # a user's module registering a built-in name fails now, clearly
    found = {}
    for module in modules:
        _importing = module_source(module)
        try:
            importlib.import_module(module)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - any error in the user's module, reported as one sentence
            raise ModelError(
                f"--import {module}: the module could not be imported ({type(exc).__name__}: {exc}); make it "
                "importable from the current folder or install it"
            ) from None
        finally:
            _importing = None
        found[module] = module_source(module)
    return found


def declare_unavailable(name: str, *, reason: str) -> None:
    """Record an optional model that is not registered because a dependency is missing.

    ``reason`` says what to install, e.g. ``"needs MONAI: pip install 'segbench[monai]'"``; asking for the model then
    raises a :class:`ModelError` with it, and ``segbench models`` lists it (:func:`unavailable_models`).
    """
    _UNAVAILABLE[name] = reason


def unavailable_models() -> dict[str, str]:
    """Optional models that are not available here, with what each needs (name → reason), sorted by name."""
    _ensure_builtins()
    return {name: _UNAVAILABLE[name] for name in sorted(_UNAVAILABLE) if name not in _MODELS}


def _family_member(family_builder: Builder, spec: FamilySpec, *, width: int, depth: int) -> Builder:
    """A builder for one member; its signature is the family's minus the knob keywords (for option checks)."""
    knobs = {spec.width.parameter: width, spec.depth.parameter: depth}

    @functools.wraps(family_builder)
    def builder(**kwargs):
        return family_builder(**knobs, **kwargs)

    try:
        signature = inspect.signature(family_builder)
    except (TypeError, ValueError):  # a callable without a signature: the call decides
        return builder
    builder.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in knobs]
    )
    return builder


def _ensure_builtins() -> None:
    # The package names its built-in families (segbench.BUILTIN_MODEL_PACKAGES); they import this module to
    # register, so this module never imports them by name, and imports them on first use, not at import time (which
    # keeps `import segbench` and `segbench --help` free of torch).
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        from segbench import BUILTIN_MODEL_PACKAGES

        for package in BUILTIN_MODEL_PACKAGES:
            importlib.import_module(package)


# ---------------------------------------------------------------------------------------------------------
# Plugins
# ---------------------------------------------------------------------------------------------------------


def plugins_disabled() -> bool:
    """True when the environment variable ``SEGBENCH_DISABLE_PLUGINS`` is set to 1/true/yes/on."""
    return os.environ.get(DISABLE_PLUGINS_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.cache
def _discover_plugins() -> dict[str, tuple[_Plugin, ...]]:
    """Entry points of the ``segbench.models`` group by name, read from metadata only (nothing imported)."""
    found: dict[str, dict[tuple[str, str], _Plugin]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = ep.dist.name if ep.dist is not None else "unknown distribution"
        # The same distribution can appear twice on sys.path (e.g. an editable install); count it once.
        found.setdefault(ep.name, {})[(distribution, ep.value)] = _Plugin(ep.name, ep.value, distribution, ep)
    return {name: tuple(by_origin.values()) for name, by_origin in found.items()}


def _plugins() -> dict[str, tuple[_Plugin, ...]]:
    return {} if plugins_disabled() else _discover_plugins()


def refresh_plugins() -> None:
    """Forget discovered and loaded plugins (call after installing or removing a plugin in a running process)."""
    _discover_plugins.cache_clear()
    _load_plugin.cache_clear()
    describe_model.cache_clear()


@functools.cache
def _load_plugin(plugin: _Plugin) -> _Entry:
    """Import a plugin's builder and read its optional attributes; any failure becomes one ModelError."""
    where = f"plugin model {plugin.name!r} from distribution {plugin.distribution!r} (entry point {plugin.value!r})"
    fix = f"fix or uninstall {plugin.distribution!r}, or set {DISABLE_PLUGINS_ENV}=1"
    try:
        builder = plugin.entry_point.load()
    except Exception as exc:  # noqa: BLE001 - any import-time failure of third-party code is reported the same way
        raise ModelError(f"{where} failed to load ({type(exc).__name__}: {exc}); {fix}") from exc
    if not callable(builder):
        raise ModelError(f"{where} is not callable (got {type(builder).__name__}); {fix}")
    divisor = getattr(builder, "segbench_divisor", 1)
    family = getattr(builder, "segbench_family", plugin.name)
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise ModelError(f"{where} declares segbench_divisor={divisor!r}, not a positive integer; {fix}")
    if not isinstance(family, str) or not family:
        raise ModelError(f"{where} declares segbench_family={family!r}, not a non-empty string; {fix}")
    spec = _plugin_family_spec(plugin, builder, where=where, fix=fix)
    return _Entry(builder=builder, family=family, divisor=divisor, source=plugin.distribution, spec=spec)


def _plugin_family_spec(plugin: _Plugin, builder: Builder, *, where: str, fix: str) -> FamilySpec | None:
    """The family a plugin builder declares with ``segbench_width`` / ``segbench_depth`` (and ``segbench_grid``)."""
    declared = {name: getattr(builder, f"segbench_{name}", None) for name in ("width", "depth", "grid")}
    if declared["width"] is None and declared["depth"] is None:
        return None
    if not re.fullmatch(r"[a-z][a-z0-9]*", plugin.name):
        raise ModelError(f"{where} declares a width/depth family, so its name must be lower-case letters and digits; "
                         f"{fix}")  # fmt: skip
    knobs = {}
    for name in ("width", "depth"):
        value = declared[name]
        try:
            knobs[name] = Knob(*value)
        except (TypeError, ModelError) as exc:
            raise ModelError(f"{where} declares segbench_{name}={value!r}, not (keyword, min, max[, step]) with "
                             f"1 <= min <= max ({exc}); {fix}") from None  # fmt: skip
    try:
        grid = tuple((int(w), int(d)) for w, d in declared["grid"] or ())
    except (TypeError, ValueError):
        raise ModelError(
            f"{where} declares segbench_grid={declared['grid']!r}, not (width, depth) pairs; {fix}"
        ) from None
    spec = FamilySpec(name=plugin.name, source=plugin.distribution, width=knobs["width"], depth=knobs["depth"],
                      grid=grid)  # fmt: skip
    for width, depth in grid:
        spec.check(width, depth)
    return spec


# ---------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------


def _family(family: str) -> _Family | None:
    """A built-in family, or a plugin that declares one (imported now); None if ``family`` is neither."""
    if family in _FAMILIES:
        return _FAMILIES[family]
    plugins = _plugins().get(family, ())
    if len(plugins) != 1:
        return None  # no such plugin, or an ambiguous one (reported when the plain name is used)
    entry = _load_plugin(plugins[0])
    return _Family(builder=entry.builder, spec=entry.spec) if entry.spec is not None else None


def _family_match(name: str) -> tuple[_Family, int, int] | None:
    """The family, width and depth of a ``{family}_w{W}_d{D}`` name; raises ModelError outside the knobs' ranges."""
    match = _FAMILY_NAME.match(name)
    family = _family(match["family"]) if match is not None else None
    if family is None:
        return None
    width, depth = int(match["width"]), int(match["depth"])
    family.spec.check(width, depth)
    return family, width, depth


def family_member(name: str) -> FamilyMember | None:
    """The family, width and depth of ``name`` if it is a member of a width/depth family, else None.

    ``unet_w14_d4`` → ``FamilyMember(unet, 14, 4)``. Fixed models (``unet``, ``fcn``, MONAI networks, plugins that
    declare no family) give None, even when they equal a member: matching scales only names that say their width.
    Plugin families are imported to read their knobs.

    Raises:
        ModelError: a member name outside the family's ranges, or a broken plugin family.
    """
    _ensure_builtins()
    found = _family_match(name)
    if found is None or (name in _MODELS and _MODELS[name].family != found[0].spec.name):
        return None
    family, width, depth = found
    return FamilyMember(spec=family.spec, width=width, depth=depth)


def families(*, load_plugins: bool = False) -> list[FamilySpec]:
    """The width/depth families, sorted by name: built-ins, and with ``load_plugins`` plugin families too.

    Loading imports every plugin; a broken one is skipped here (it fails with a clear error when used).
    """
    _ensure_builtins()
    found = {name: family.spec for name, family in _FAMILIES.items()}
    if load_plugins:
        for name, plugins in _plugins().items():
            if len(plugins) != 1 or name in found:
                continue
            try:
                spec = _load_plugin(plugins[0]).spec
            except ModelError as exc:
                logger.debug("skipping plugin %s while listing families: %s", name, exc)
                continue
            if spec is not None:
                found[name] = spec
    return [found[name] for name in sorted(found)]


def _unknown(name: str) -> ModelError:
    if name in _UNAVAILABLE:
        return ModelError(f"model {name!r} is not available here: it {_UNAVAILABLE[name]}")
    choices = list_models()
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    members = ", ".join(f"{family}_w{{W}}_d{{D}}" for family in sorted(_FAMILIES))
    also = f" (or any {members})" if members else ""
    return ModelError(f"unknown model {name!r}; {hint}choose from: {', '.join(choices)}{also}")


def _lookup(name: str) -> _Entry:
    """The entry for ``name``: registered, family member or plugin (loaded now). Raises ModelError."""
    _ensure_builtins()
    plugins = _plugins().get(name, ())
    builtin = _MODELS.get(name)
    member = _family_match(name) if builtin is None else None
    providers = sorted(p.distribution for p in plugins)
    if builtin is not None or member is not None:
        if plugins:
            source = builtin.source if builtin is not None else member[0].source
            raise ModelError(
                f"model {name!r} is provided by both {source!r} and plugin distribution(s) "
                f"{', '.join(map(repr, providers))}; uninstall the plugin or set {DISABLE_PLUGINS_ENV}=1"
            )
        if builtin is not None:
            return builtin
        family, width, depth = member
        return _Entry(
            builder=_family_member(family.builder, family.spec, width=width, depth=depth),
            family=family.spec.name,
            divisor=2**depth,
            source=family.source,
        )
    if len(plugins) > 1:
        raise ModelError(
            f"model {name!r} is provided by several plugin distributions ({', '.join(map(repr, providers))}); "
            "uninstall all but one"
        )
    if plugins:
        return _load_plugin(plugins[0])
    raise _unknown(name)


def builder_module(name: str) -> str:
    """The module that defines model ``name``'s builder (its family's builder for a family member).

    A process that imports it has the model registered (executors hand it to job processes).

    Raises:
        ModelError: as :func:`build_model`.
    """
    return _lookup(name).builder.__module__


def list_models(pattern: str | None = None, *, load_plugins: bool = False) -> list[str]:
    """Sorted names of registered and plugin models (plugins are not imported), optionally filtered.

    Args:
        pattern: ``fnmatch`` wildcards (``"unet_*"``); several comma-separated patterns select the union.
            Width/depth family members outside the default grid are not listed (they still build by name).
        load_plugins: import the plugins, so that the grids of plugin families are listed too.

    Returns:
        Sorted list of names; empty if nothing matches.
    """
    _ensure_builtins()
    names = set(_MODELS) | set(_plugins())
    if load_plugins:
        names |= {spec.member(*point) for spec in families(load_plugins=True) for point in spec.grid}
    if pattern is None:
        return sorted(names)
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    return sorted(name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns))


def resolve_models(spec: str) -> list[str]:
    """Expand a ``--models`` value: comma-separated names and wildcards, in the given order, without repeats.

    Each wildcard pattern expands to its sorted matches, e.g. ``resolve_models("unet,fcn_w1*")`` →
    ``["unet", "fcn_w10_d2", "fcn_w10_d3"]``.

    Exact names may be any buildable model, including unlisted family members such as ``unet_w32_d4``.

    Raises:
        ModelError: if the value is empty, a wildcard matches nothing, or a name is unknown.
    """
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ModelError(f"model list {spec!r} names no model; give names or wildcards such as fcn,unet_*")
    resolved: list[str] = []
    for part in parts:
        if any(char in part for char in "*?["):
            matches = list_models(part, load_plugins=True)
            if not matches:
                raise ModelError(f"model pattern {part!r} matches no model; run `segbench models` to see the names")
        else:
            _lookup(part)  # raises for unknown names (with the list of choices) and broken plugins
            matches = [part]
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def needs_plan(name: str) -> bool:
    """True if model ``name`` is built from a plan (nnU-Net's networks): :func:`build_model` then needs ``plan``.

    Raises:
        ModelError: as :func:`build_model`.
    """
    return _lookup(name).needs_plan


def has_deep_supervision(name: str) -> bool:
    """True if model ``name`` has deep-supervision outputs (``build_model(..., deep_supervision=True)``).

    Raises:
        ModelError: as :func:`build_model`.
    """
    return _lookup(name).deep_supervision


def input_divisors(
    name: str, *, plan: NetworkPlan | None = None, in_channels: int = 1, out_channels: int = 1, ndim: int = 3
) -> tuple[int, ...]:
    """Per axis, what every input size of model ``name`` must be a multiple of (from the plan for a plan-built one).

    Raises:
        ModelError: as :func:`model_info`.
    """
    info = model_info(name, in_channels=in_channels, out_channels=out_channels, plan=plan)
    return info.axis_divisors or (info.divisor,) * ndim


# Sources whose builders are segbench's own adapters: their errors are bugs to see whole, not a broken plugin.
_OWN_SOURCES = ("segbench", "monai", "dynamic-network-architectures")


# The run's plan while a run or a job is set up (network_plan_scope): plan-built models called without an explicit
# plan use it, so that the cost, memory and patch checks that describe a model by name need no plan argument.
_ACTIVE_PLAN: contextvars.ContextVar[NetworkPlan | None] = contextvars.ContextVar("segbench_network_plan", default=None)


@contextlib.contextmanager
def network_plan_scope(plan: NetworkPlan | None) -> Iterator[None]:
    """Within the block, plan-built models built or described without ``plan`` use ``plan`` (the run's)."""
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield
    finally:
        _ACTIVE_PLAN.reset(token)


def _plan_options(name: str, entry: _Entry, plan: NetworkPlan | None, deep_supervision: bool) -> dict:
    """The ``plan`` / ``deep_supervision`` keywords ``entry``'s builder takes; refuses what it cannot do."""
    options: dict = {}
    if entry.needs_plan:
        plan = plan if plan is not None else _ACTIVE_PLAN.get()
        if plan is None:
            raise ModelError(f"model {name!r} needs a plan: pass --plans FILE or --recipe nnunet")
        options["plan"] = plan
    if entry.deep_supervision:
        options["deep_supervision"] = bool(deep_supervision)
    elif deep_supervision:
        raise ModelError(f"model {name!r} has no deep-supervision outputs; build it with deep_supervision=False "
                         "(segbench.registry.has_deep_supervision tells which models have them)")  # fmt: skip
    return options


def _check_options(name: str, builder: Builder, options: dict) -> None:
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # some callables (C extensions) have no signature; let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    accepted = [n for n in signature.parameters if n not in ("in_channels", "out_channels", "plan", "deep_supervision")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ModelError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) if accepted else 'no options'}"
        )


def build_model(
    name: str,
    *,
    in_channels: int,
    out_channels: int,
    plan: NetworkPlan | None = None,
    deep_supervision: bool = False,
    **kwargs,
) -> nn.Module:
    """Build model ``name`` for ``in_channels`` image channels and ``out_channels`` logit channels.

    Args:
        name: a listed name, a family member (``unet_w32_d4``) or a plugin model.
        in_channels: C_in of the (B, C_in, D, H, W) input.
        out_channels: C_out of the (B, C_out, D, H, W) logits.
        plan: the run's :class:`~segbench.plans.network.NetworkPlan`; required by plan-built models
            (:func:`needs_plan`), ignored by the others, so a caller may pass it for every model.
        deep_supervision: build with deep-supervision outputs (only for models where :func:`has_deep_supervision`):
            in training mode the forward pass then returns a list of logits, full resolution first (the module
            docstring gives the shapes); in eval mode the (B, C_out, D, H, W) logits alone.
        **kwargs: builder options, e.g. ``norm="instance"``, ``upsample="trilinear"`` for fcn/unet.

    Returns:
        A freshly initialised ``nn.Module`` on the CPU (default dtype), in training mode.

    Raises:
        ModelError: unknown name (lists the choices), unknown option, broken plugin, a plugin builder that
            raised or returned something other than an ``nn.Module``, a plan-built model without ``plan`` ("needs a
            plan: pass --plans FILE or --recipe nnunet"), or ``deep_supervision`` for a model without such outputs.
    """
    entry = _lookup(name)
    _check_options(name, entry.builder, kwargs)
    kwargs = {**_plan_options(name, entry, plan, deep_supervision), **kwargs}
    if entry.source in _OWN_SOURCES:
        model = entry.builder(in_channels=in_channels, out_channels=out_channels, **kwargs)
    else:
        try:
            model = entry.builder(in_channels=in_channels, out_channels=out_channels, **kwargs)
        except Exception as exc:  # noqa: BLE001 - third-party code: report which plugin failed
            raise ModelError(
                f"plugin model {name!r} from distribution {entry.source!r} failed to build "
                f"({type(exc).__name__}: {exc}); fix or uninstall {entry.source!r}"
            ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"builder of model {name!r} ({entry.source}) returned {type(model).__name__}, not nn.Module")
    return model


# ---------------------------------------------------------------------------------------------------------
# Cost
# ---------------------------------------------------------------------------------------------------------


def model_info(name: str, *, in_channels: int = 1, out_channels: int = 1, plan: NetworkPlan | None = None) -> ModelInfo:
    """:func:`describe_model` with the run's plan (:func:`network_plan_scope`) when ``plan`` is not given."""
    if plan is None and _lookup(name).needs_plan:
        plan = _ACTIVE_PLAN.get()
    return describe_model(name, in_channels=in_channels, out_channels=out_channels, plan=plan)


@functools.cache
def describe_model(
    name: str, *, in_channels: int = 1, out_channels: int = 1, plan: NetworkPlan | None = None
) -> ModelInfo:
    """Family, source, parameter count, divisor and MFLOP per voxel of model ``name`` (default options).

    FLOPs are counted in one training step (forward FLOPs read off before the backward pass; normalisation and
    dropout modes do not change the counted convolutions), without deep supervision, on a (1, C_in, *patch) input:
    the patch of ``plan`` when one is given and fits the model's divisors, else a cube of side ``s``, the smallest
    multiple of the divisor that is ≥ 16 and ≥ twice the divisor. They are counted on the ``meta`` device when the
    model supports it (no memory, no compute) and on the CPU (on the cube) otherwise. Results are cached per process.

    Args:
        plan: a :class:`~segbench.plans.network.NetworkPlan`: plan-built models need it (their topology, and so
            their parameters and divisors, come from it); for the others it only sets the patch FLOPs are counted at.

    A model that builds but whose forward or backward pass raises gets NaN FLOPs (and a logged warning)
    rather than an error: describing a model must not stop a comparison in which its job will fail visibly.

    Raises:
        ModelError: as :func:`build_model` (a plan-built model without ``plan`` included).
    """
    entry = _lookup(name)
    _plan_options(name, entry, plan, False)  # a plan-built model without a plan: the one-sentence refusal
    model, flops, axes, shape = _measure(name, entry, (in_channels, out_channels), plan)
    voxels = math.prod(shape[2:])
    return ModelInfo(
        name=name,
        family=entry.family,
        source=entry.source,
        params=count_parameters(model),
        divisor=math.lcm(*axes) if axes else entry.divisor,
        mflop_per_voxel_forward=flops[0] / voxels / 1e6,
        mflop_per_voxel_train=flops[1] / voxels / 1e6,
        axis_divisors=axes,
        patch=tuple(shape[2:]) if plan is not None and tuple(shape[2:]) == tuple(plan.patch_size) else None,
    )


def _measure(name: str, entry: _Entry, channels: tuple[int, int], plan: NetworkPlan | None):
    """``(model, (forward, train-step FLOPs), declared axis divisors, probe input shape)`` for :func:`model_info`."""

    def build() -> nn.Module:
        return build_model(name, in_channels=channels[0], out_channels=channels[1], plan=plan)

    try:
        with torch.device("meta"):
            model = build()
        axes, shape = _probe(model, entry, channels[0], plan)
        return model, measure_flops(model, shape, train_step=True), axes, shape
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the meta device cannot do, the CPU may
        # Some third-party layers compute on data at build or run time, which the meta device cannot do.
        logger.debug("counting FLOPs of %s on the CPU: the meta device failed (%s)", name, exc)
    model = build()
    axes, shape = _probe(model, entry, channels[0], None)  # the small cube: a plan's patch can be costly on a CPU
    try:
        flops: tuple[float, float] = measure_flops(model, shape, train_step=True)
    except Exception as exc:  # noqa: BLE001 - a broken forward is reported by the job that runs it
        logger.warning("cannot count FLOPs of model %s: a training step failed (%s: %s)", name, type(exc).__name__, exc)
        flops = (math.nan, math.nan)
    return model, flops, axes, shape


def _probe(model: nn.Module, entry: _Entry, in_channels: int, plan: NetworkPlan | None):
    """The model's declared per-axis divisors (or None) and the input shape FLOPs are counted on."""
    declared = getattr(model, "segbench_axis_divisors", None)
    axes = tuple(int(d) for d in declared) if declared else None
    divisors = axes or (entry.divisor,) * 3
    if plan is not None and all(int(p) % d == 0 for p, d in zip(plan.patch_size, divisors, strict=True)):
        return axes, (1, in_channels, *plan.patch_size)
    side = flop_probe_side(math.lcm(*divisors))
    return axes, (1, in_channels, side, side, side)
