"""Experiment planning as nnU-Net v2 does it: dataset fingerprint -> plan (spacing, patch, batch, topology,
normalization) -> an nnU-Net v2 plans file; and a patch fitted to the models being compared (:mod:`.fit`).

Modules, in dataflow order: :mod:`.fingerprint` (what the data look like), :mod:`.rules` (target spacing,
transposition, normalization), :mod:`.topology` (pooling and kernels), :mod:`.vram` (nnU-Net's memory proxy),
:mod:`.presets` (the four planners), :mod:`.planner` (patch and batch per configuration), :mod:`.writer` (the
JSON schema), :mod:`.api` (a dataset folder in, files out); :mod:`.reader` reads a plans file (nnU-Net's or
segbench's) for ``segbench run --plans`` and checks that it fits the dataset; :mod:`.network` turns a plan into what
nnU-Net's networks are built from (:class:`NetworkPlan`).

All plan quantities are in nnU-Net's axis order, which is segbench's array-axis order reversed (configurations
also transposed); :mod:`.axes` converts.
"""

from segbench.plans.api import nnunet_dataset_name, plan_dataset, write_plan
from segbench.plans.axes import array_to_configuration_axes, configuration_to_array_axes, from_plan_axes, to_plan_axes
from segbench.plans.fingerprint import DatasetFingerprint, extract_fingerprint
from segbench.plans.network import NetworkPlan, network_plan_from_experiment, read_network_plan
from segbench.plans.planner import ConfigurationPlan, ExperimentPlan, plan_experiment
from segbench.plans.presets import PRESETS, PlannerPreset, get_preset
from segbench.plans.writer import plans_to_json

__all__ = [
    "PRESETS",
    "ConfigurationPlan",
    "DatasetFingerprint",
    "ExperimentPlan",
    "NetworkPlan",
    "PlannerPreset",
    "array_to_configuration_axes",
    "configuration_to_array_axes",
    "extract_fingerprint",
    "from_plan_axes",
    "get_preset",
    "network_plan_from_experiment",
    "nnunet_dataset_name",
    "plan_dataset",
    "plan_experiment",
    "plans_to_json",
    "read_network_plan",
    "to_plan_axes",
    "write_plan",
]
