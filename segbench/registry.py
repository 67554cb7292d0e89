"""The model registry: named builders, width/depth families, entry-point plugins, parameter and FLOP counts.

A *builder* is a callable ``builder(*, in_channels, out_channels, **options) -> nn.Module`` whose module maps
(B, C_in, D, H, W) to logits (B, C_out, D, H, W). Each model declares a *divisor*: every input size must be a
multiple of it (padding happens in data loading / inference, never inside a model).

Three sources of models:

* built-ins, registered with :func:`register_model` in ``segbench.models`` (imported on first use);
* families registered with :func:`register_family`: any ``{family}_w{W}_d{D}`` name builds without being
  registered (divisor ``2**D``); the family's default grid is listed;
* plugins: installed distributions declare entry points in the group ``segbench.models`` without importing
  segbench. Convention: the entry point *name* is the model name and its *object* is the builder; optional
  attributes on the builder: ``segbench_divisor`` (int, default 1) and ``segbench_family`` (str, default the
  model name). Example ``pyproject.toml`` of a plugin::

      [project.entry-points."segbench.models"]
      mynet = "mypackage.nets:build_mynet"

  Plugins are listed from their metadata alone and imported only when a model is built or described, so a
  broken plugin fails only when used, with a :class:`~segbench.errors.ModelError` naming the distribution.
  ``SEGBENCH_DISABLE_PLUGINS=1`` turns plugins off.

Errors: a duplicate name, an unknown name (the message lists the choices), a pattern matching nothing, bad
builder options and broken plugins all raise :class:`~segbench.errors.ModelError`.
"""

from __future__ import annotations

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
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from segbench.errors import ModelError
from segbench.profiling import count_parameters, flop_probe_side, measure_flops

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelInfo",
    "build_model",
    "builder_module",
    "list_models",
    "model_info",
    "plugins_disabled",
    "refresh_plugins",
    "register_family",
    "register_model",
    "resolve_models",
    "unregister_model",
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
    """

    name: str
    family: str
    source: str
    params: int
    divisor: int
    mflop_per_voxel_forward: float
    mflop_per_voxel_train: float


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    family: str
    divisor: int
    source: str


@dataclass(frozen=True)
class _Family:
    builder: Builder  # builder(*, in_channels, out_channels, width, depth, **options)
    source: str


@dataclass(frozen=True)
class _Plugin:
    name: str
    value: str  # "module:object", for error messages
    distribution: str
    entry_point: importlib.metadata.EntryPoint


_MODELS: dict[str, _Entry] = {}
_FAMILIES: dict[str, _Family] = {}
_FAMILY_NAME = re.compile(r"^(?P<family>[a-z][a-z0-9]*)_w(?P<width>[1-9][0-9]*)_d(?P<depth>[1-9][0-9]*)$")
_builtins_loaded = False


# ---------------------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------------------


def register_model(name: str, *, family: str, divisor: int, source: str = "segbench") -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(*, in_channels, out_channels, **options) -> nn.Module`` as ``name``.

    Args:
        name: unique model name (used on the command line, in run directories and reports).
        family: architecture family shown in tables.
        divisor: input sizes must be multiples of it (e.g. ``2**poolings``).
        source: who provides it (``"segbench"``, ``"monai"``, or a distribution name).

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
        _MODELS[name] = _Entry(builder=builder, family=family, divisor=divisor, source=source)
        model_info.cache_clear()
        return builder

    return decorator


def register_family(
    family: str, *, grid: tuple[tuple[int, int], ...] = (), source: str = "segbench"
) -> Callable[[Builder], Builder]:
    """Decorator registering a width/depth family: any ``{family}_w{W}_d{D}`` name builds with divisor ``2**D``.

    The decorated builder takes ``(*, in_channels, out_channels, width, depth, **options)``. Members in
    ``grid`` (``(width, depth)`` pairs) are also registered by name, so they are listed; other members build
    on demand without being listed.

    Raises:
        ModelError: if the family is already registered, its name is not lower-case alphanumeric, or a grid
            member's name is taken.
    """
    if not re.fullmatch(r"[a-z][a-z0-9]*", family):
        raise ModelError(f"family name {family!r} must be lower-case letters and digits (it becomes {family}_w20_d2)")

    def decorator(builder: Builder) -> Builder:
        _ensure_builtins()
        if family in _FAMILIES:
            raise ModelError(f"model family {family!r} is already registered; choose another name")
        _FAMILIES[family] = _Family(builder=builder, source=source)
        for width, depth in grid:
            register_model(f"{family}_w{width}_d{depth}", family=family, divisor=2**depth, source=source)(
                _family_member(builder, width=width, depth=depth)
            )
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
    model_info.cache_clear()


def _family_member(family_builder: Builder, *, width: int, depth: int) -> Builder:
    """A builder for one grid point; its signature is the family's minus ``width``/``depth`` (for option checks)."""

    @functools.wraps(family_builder)
    def builder(**kwargs):
        return family_builder(width=width, depth=depth, **kwargs)

    signature = inspect.signature(family_builder)
    builder.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in ("width", "depth")]
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
    model_info.cache_clear()


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
    return _Entry(builder=builder, family=family, divisor=divisor, source=plugin.distribution)


# ---------------------------------------------------------------------------------------------------------
# Lookup
# ---------------------------------------------------------------------------------------------------------


def _family_match(name: str) -> tuple[str, int, int] | None:
    match = _FAMILY_NAME.match(name)
    if match is None or match["family"] not in _FAMILIES:
        return None
    return match["family"], int(match["width"]), int(match["depth"])


def _unknown(name: str) -> ModelError:
    choices = list_models()
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    families = ", ".join(f"{family}_w{{W}}_d{{D}}" for family in sorted(_FAMILIES))
    also = f" (or any {families})" if families else ""
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
            source = builtin.source if builtin is not None else _FAMILIES[member[0]].source
            raise ModelError(
                f"model {name!r} is provided by both {source!r} and plugin distribution(s) "
                f"{', '.join(map(repr, providers))}; uninstall the plugin or set {DISABLE_PLUGINS_ENV}=1"
            )
        if builtin is not None:
            return builtin
        family, width, depth = member
        return _Entry(
            builder=_family_member(_FAMILIES[family].builder, width=width, depth=depth),
            family=family,
            divisor=2**depth,
            source=_FAMILIES[family].source,
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


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of registered and plugin models (plugins are not imported), optionally filtered.

    Args:
        pattern: ``fnmatch`` wildcards (``"unet_*"``); several comma-separated patterns select the union.
            Width/depth family members outside the default grid are not listed (they still build by name).

    Returns:
        Sorted list of names; empty if nothing matches.
    """
    _ensure_builtins()
    names = set(_MODELS) | set(_plugins())
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
            matches = list_models(part)
            if not matches:
                raise ModelError(f"model pattern {part!r} matches no model; run `segbench models` to see the names")
        else:
            _lookup(part)  # raises for unknown names (with the list of choices) and broken plugins
            matches = [part]
        resolved.extend(m for m in matches if m not in resolved)
    return resolved


def _check_options(name: str, builder: Builder, options: dict) -> None:
    try:
        signature = inspect.signature(builder)
    except (TypeError, ValueError):  # some callables (C extensions) have no signature; let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    accepted = [n for n in signature.parameters if n not in ("in_channels", "out_channels")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ModelError(
            f"model {name!r} does not accept option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted) if accepted else 'no options'}"
        )


def build_model(name: str, *, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """Build model ``name`` for ``in_channels`` image channels and ``out_channels`` logit channels.

    Args:
        name: a listed name, a family member (``unet_w32_d4``) or a plugin model.
        in_channels: C_in of the (B, C_in, D, H, W) input.
        out_channels: C_out of the (B, C_out, D, H, W) logits.
        **kwargs: builder options, e.g. ``norm="instance"``, ``upsample="trilinear"`` for fcn/unet.

    Returns:
        A freshly initialised ``nn.Module`` on the CPU (default dtype), in training mode.

    Raises:
        ModelError: unknown name (lists the choices), unknown option, broken plugin, or a plugin builder that
            raised or returned something other than an ``nn.Module``.
    """
    entry = _lookup(name)
    _check_options(name, entry.builder, kwargs)
    if entry.source in ("segbench", "monai"):
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


@functools.cache
def model_info(name: str, *, in_channels: int = 1, out_channels: int = 1) -> ModelInfo:
    """Family, source, parameter count, divisor and MFLOP per voxel of model ``name`` (default options).

    FLOPs are counted in one training step (forward FLOPs read off before the backward pass; normalisation and
    dropout modes do not change the counted convolutions) on a (1, C_in, s, s, s) input, ``s`` the smallest
    multiple of the divisor that is ≥ 16 and ≥ twice the divisor, on the ``meta`` device when the model
    supports it (no memory, no compute) and on the CPU otherwise. Results are cached per process.

    A model that builds but whose forward or backward pass raises gets NaN FLOPs (and a logged warning)
    rather than an error: describing a model must not stop a comparison in which its job will fail visibly.

    Raises:
        ModelError: as :func:`build_model`.
    """
    entry = _lookup(name)
    side = flop_probe_side(entry.divisor)
    shape = (1, in_channels, side, side, side)
    try:
        with torch.device("meta"):
            model = build_model(name, in_channels=in_channels, out_channels=out_channels)
        flops: tuple[float, float] = measure_flops(model, shape, train_step=True)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the meta device cannot do, the CPU may
        # Some third-party layers compute on data at build or run time, which the meta device cannot do.
        logger.debug("counting FLOPs of %s on the CPU: the meta device failed (%s)", name, exc)
        model = build_model(name, in_channels=in_channels, out_channels=out_channels)
        try:
            flops = measure_flops(model, shape, train_step=True)
        except Exception as exc:  # noqa: BLE001 - a broken forward is reported by the job that runs it
            logger.warning(
                "cannot count FLOPs of model %s: a training step failed (%s: %s)", name, type(exc).__name__, exc
            )
            flops = (math.nan, math.nan)
    params = count_parameters(model)
    voxels = side**3
    return ModelInfo(
        name=name,
        family=entry.family,
        source=entry.source,
        params=params,
        divisor=entry.divisor,
        mflop_per_voxel_forward=flops[0] / voxels / 1e6,
        mflop_per_voxel_train=flops[1] / voxels / 1e6,
    )
