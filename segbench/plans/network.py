"""What a network built from a plan needs: :class:`NetworkPlan` (patch, spacing and the plan's ``architecture``).

nnU-Net builds its network from a plans file's configuration: ``architecture.network_class_name`` (a
dynamic-network-architectures class), ``architecture.arch_kwargs`` (stages, features, kernels, strides, blocks) and
``architecture._kw_requires_import`` (the keyword arguments that name classes, e.g. ``torch.nn.Conv3d``).
:class:`NetworkPlan` carries that entry together with the configuration's patch and spacing, from a plans file
(:func:`read_network_plan`, nnU-Net's or segbench's) or from segbench's own planner
(:func:`network_plan_from_experiment`).

One plan serves several networks: :func:`network_architecture_for` returns the plan's own entry when it describes the
preset's network (same class), and otherwise the architecture that preset's planner gives at the plan's patch and
spacing (nnU-Net's topology rule depends on those two alone). nnU-Net's ResEnc presets M, L and XL differ only in
the GPU memory they plan for (so in patch and batch size): at one patch they build the same network.

Axis order: the plan's (nnU-Net's), which is the order of the arrays a plan-driven run trains on.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segbench.errors import ConfigError
from segbench.plans.planner import ExperimentPlan, stage_layout
from segbench.plans.presets import PlannerPreset
from segbench.plans.reader import DEFAULT_CONFIGURATION, load_plans_json, resolve_configuration
from segbench.plans.topology import MIN_FEATURE_MAP_EDGE, pool_and_conv_props
from segbench.plans.writer import architecture_to_json, network_architecture

__all__ = [
    "NetworkPlan",
    "network_architecture_for",
    "network_plan_from_experiment",
    "network_plan_from_json",
    "read_network_plan",
]


@dataclass(frozen=True)
class NetworkPlan:
    """One 3D configuration of a plan, as a network builder needs it (hashable: the architecture is kept as JSON).

    Attributes:
        patch_size: training patch in voxels (plan axis order).
        spacing: target spacing in mm (plan axis order).
        configuration: the configuration's name (``3d_fullres``).
        plans_name: the plan's ``plans_name`` (``nnUNetPlans``, ``nnUNetResEncUNetMPlans`` ...).
        architecture_json: the configuration's ``architecture`` entry as canonical JSON, or ``""`` when the plan has
            none or the patch was changed after planning (the entry's topology belongs to the planned patch).
        origin: where the plan came from, for messages (``"plans.json (3d_fullres)"``).
    """

    patch_size: tuple[int, ...]
    spacing: tuple[float, ...]
    configuration: str = DEFAULT_CONFIGURATION
    plans_name: str = ""
    architecture_json: str = ""
    origin: str = "a plan"

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or len(self.spacing) != 3:
            raise ConfigError(f"{self.origin}: a network plan needs a 3D patch and spacing, got patch "
                              f"{self.patch_size} and spacing {self.spacing}")  # fmt: skip

    @property
    def architecture(self) -> dict[str, Any] | None:
        """The plan's ``architecture`` entry (a fresh dict), or None."""
        return json.loads(self.architecture_json) if self.architecture_json else None

    def with_patch(self, patch_size: tuple[int, ...]) -> NetworkPlan:
        """The plan with another patch (e.g. ``--patch``); the plan's own architecture is dropped if it changes, so
        that networks are derived for the new patch."""
        patch = tuple(int(s) for s in patch_size)
        if patch == self.patch_size:
            return self
        return dataclasses.replace(self, patch_size=patch, architecture_json="")


def _canonical(architecture: Any) -> str:
    return json.dumps(architecture, sort_keys=True) if architecture else ""


def network_plan_from_json(
    plans: dict[str, Any], configuration: str = DEFAULT_CONFIGURATION, *, path: str | Path = "the plans file"
) -> NetworkPlan:
    """The :class:`NetworkPlan` of ``configuration`` in a parsed plans file (``inherits_from`` resolved); ``path``
    names the file in messages.

    Raises:
        ConfigError: unknown configuration, not 3D, or a missing or garbled patch / spacing.
    """
    config = resolve_configuration(plans, configuration, path)
    where = f"--plans {path} (configuration {configuration})"
    try:
        patch = tuple(int(s) for s in config["patch_size"])
        spacing = tuple(float(s) for s in config["spacing"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where} lacks or garbles the entry {exc}; write it with nnU-Net or `segbench plan`"
        ) from None
    return NetworkPlan(patch_size=patch, spacing=spacing, configuration=configuration,
                       plans_name=str(plans.get("plans_name", "")),
                       architecture_json=_canonical(config.get("architecture")), origin=where)  # fmt: skip


def read_network_plan(path: str | Path, configuration: str = DEFAULT_CONFIGURATION) -> NetworkPlan:
    """The :class:`NetworkPlan` of one configuration of the plans file at ``path`` (nnU-Net's or segbench's).

    Raises:
        ConfigError: the file is missing or not a plans file, or as :func:`network_plan_from_json`.
    """
    return network_plan_from_json(load_plans_json(path), configuration, path=path)


def network_plan_from_experiment(plan: ExperimentPlan, configuration: str = DEFAULT_CONFIGURATION) -> NetworkPlan:
    """The :class:`NetworkPlan` of a plan segbench's planner made (no file needed), e.g. one planned on the fly.

    Raises:
        ConfigError: the plan has no such configuration (a dataset of 2D images has no ``3d_fullres``).
    """
    if configuration not in plan.configurations:
        raise ConfigError(f"the plan of {plan.dataset_name} has no configuration {configuration}; it has "
                          f"{', '.join(plan.configurations)}")  # fmt: skip
    config = plan.configurations[configuration]
    architecture = _canonical(architecture_to_json(plan, config))
    return NetworkPlan(patch_size=tuple(config.patch_size), spacing=tuple(config.spacing), configuration=configuration,
                       plans_name=plan.preset.plans_name, architecture_json=architecture,
                       origin=f"the {plan.preset.name} plan of {plan.dataset_name} ({configuration})")  # fmt: skip


def network_architecture_for(plan: NetworkPlan, preset: PlannerPreset) -> dict[str, Any]:
    """The ``architecture`` entry ``preset``'s network has under ``plan``: the plan's own entry when it names the
    preset's network class, else the one ``preset``'s planner writes for the plan's patch and spacing.

    Returns:
        ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``, as in a plans file.
    """
    own = plan.architecture
    if own is not None and own.get("network_class_name") == preset.network_class_name:
        return own
    topology = pool_and_conv_props(plan.spacing, plan.patch_size, min_edge=MIN_FEATURE_MAP_EDGE)
    features, enc, dec = stage_layout(preset, topology, max_features=preset.max_features_3d)
    return network_architecture(preset, topology, features=features, blocks_encoder=enc, blocks_decoder=dec)
