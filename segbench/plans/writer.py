"""Plans files in nnU-Net v2's JSON schema (``nnUNetPlans.json``), written so that nnU-Net itself can read them.

Axes are nnU-Net's (see :mod:`segbench.plans.fingerprint`); ``image_reader_writer`` is ``SimpleITKIO``, the reader
nnU-Net picks for NIfTI files and whose axis order the plan uses.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from segbench.plans.planner import ConfigurationPlan, ExperimentPlan
from segbench.plans.presets import PlannerPreset
from segbench.plans.topology import Topology

#: The reader nnU-Net uses for NIfTI; the plan's axis order is its array order.
IMAGE_READER_WRITER = "SimpleITKIO"

_RESAMPLING = "resample_data_or_seg_to_shape"


def plans_to_json(plan: ExperimentPlan) -> dict:
    """The plans file's JSON document (nnU-Net's key order)."""
    preset = plan.preset
    return {
        "dataset_name": plan.dataset_name,
        "plans_name": preset.plans_name,
        "original_median_spacing_after_transp": list(plan.original_median_spacing),
        "original_median_shape_after_transp": list(plan.original_median_shape),
        "image_reader_writer": IMAGE_READER_WRITER,
        "transpose_forward": list(plan.transpose_forward),
        "transpose_backward": list(plan.transpose_backward),
        "configurations": {name: configuration_to_json(plan, c) for name, c in plan.configurations.items()}
        | _cascade(plan),
        "experiment_planner_used": preset.planner,
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": plan.fingerprint.to_json()[
            "foreground_intensity_properties_per_channel"
        ],
    }


def _cascade(plan: ExperimentPlan) -> dict:
    if "3d_lowres" in plan.configurations and "3d_fullres" in plan.configurations:
        return {"3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}
    return {}


def configuration_to_json(plan: ExperimentPlan, config: ConfigurationPlan) -> dict:
    """One configuration's entry, with the architecture nnU-Net builds from it."""
    doc = {
        "data_identifier": plan.preset.data_identifier(config.name),
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": config.batch_size,
        "patch_size": list(config.patch_size),
        "median_image_size_in_voxels": list(config.median_shape),
        "spacing": list(config.spacing),
        "normalization_schemes": list(plan.normalization_schemes),
        "use_mask_for_norm": list(plan.use_mask_for_norm),
        "resampling_fn_data": _RESAMPLING,
        "resampling_fn_seg": _RESAMPLING,
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": _RESAMPLING,
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": architecture_to_json(plan, config),
        "batch_dice": config.batch_dice,
    }
    if config.name == "3d_lowres" and "3d_fullres" in plan.configurations:
        doc["next_stage"] = "3d_cascade_fullres"
    return doc


def architecture_to_json(plan: ExperimentPlan, config: ConfigurationPlan) -> dict:
    """``architecture``: the network class and its keyword arguments, as dynamic-network-architectures takes them."""
    return network_architecture(plan.preset, config.topology, features=config.features,
                                blocks_encoder=config.blocks_encoder, blocks_decoder=config.blocks_decoder)  # fmt: skip


def network_architecture(
    preset: PlannerPreset,
    topology: Topology,
    *,
    features: Sequence[int],
    blocks_encoder: Sequence[int],
    blocks_decoder: Sequence[int],
) -> dict:
    """A plans file's ``architecture`` entry for ``preset``'s network on ``topology`` (nnU-Net's keys and values)."""
    dim = len(topology.patch_size)
    blocks_key = "n_blocks_per_stage" if preset.residual else "n_conv_per_stage"
    return {
        "network_class_name": preset.network_class_name,
        "arch_kwargs": {
            "n_stages": topology.n_stages,
            "features_per_stage": list(features),
            "conv_op": f"torch.nn.modules.conv.Conv{dim}d",
            "kernel_sizes": [list(k) for k in topology.kernel_sizes],
            "strides": [list(s) for s in topology.strides],
            blocks_key: list(blocks_encoder),
            "n_conv_per_stage_decoder": list(blocks_decoder),
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{dim}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def fingerprint_path(plans_path: str | Path) -> Path:
    """Where the fingerprint of a plans file is written: beside it, ``plans.json`` -> ``plans.fingerprint.json``.

    (nnU-Net calls it ``dataset_fingerprint.json``; the schema is the same. One name per plans file, so plans of
    several datasets can share a folder.)"""
    path = Path(plans_path)
    return path.with_name(f"{path.name[: -len(path.suffix)] if path.suffix else path.name}.fingerprint.json")


def dumps(doc: dict) -> str:
    """JSON text as nnU-Net writes it (indent 4, key order kept), with a final newline."""
    return json.dumps(doc, indent=4) + "\n"
