"""nnU-Net v2's experiment planner: a fingerprint and a preset in, the configurations of a plans file out.

:func:`plan_configuration` chooses one configuration's patch, topology and batch size; :func:`plan_experiment` runs
it for ``3d_fullres`` (plus ``3d_lowres`` when the full-resolution patch covers under a quarter of the median image,
and ``2d``) exactly as nnU-Net 2.8.1 does. All axes are in plan order, spacings in mm, sizes in voxels.

The patch rule: start from a patch of 256³ voxels' volume shaped by the inverse spacing (isotropic in mm),
clipped to the median image shape; take its topology (:mod:`segbench.plans.topology`); while the U-Net's
feature-map count (:mod:`segbench.plans.vram`) exceeds the preset's reference scaled to its GPU memory, shrink the
axis that is largest relative to the median shape by one divisor step. The batch size fills the remaining headroom,
at least 2, capped so that one batch covers at most the preset's share of the dataset's voxels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segbench.plans.fingerprint import DatasetFingerprint
from segbench.plans.presets import PlannerPreset
from segbench.plans.rules import compute_new_shape, fullres_target_spacing, normalization_schemes, transpose_axes
from segbench.plans.topology import MIN_FEATURE_MAP_EDGE, Topology, features_per_stage, pool_and_conv_props
from segbench.plans.vram import plain_unet_feature_map_size, resenc_unet_feature_map_size

#: A 3d_lowres configuration is added while the fullres patch covers less than this share of the median image.
LOWRES_CREATION_THRESHOLD = 0.25
#: Step by which 3d_lowres coarsens the spacing.
LOWRES_SPACING_STEP = 1.03


@dataclass(frozen=True)
class ConfigurationPlan:
    """One configuration of a plans file (plan axis order).

    Attributes:
        name: ``"3d_fullres"``, ``"3d_lowres"`` or ``"2d"``.
        spacing: target voxel size in mm.
        median_shape: median image size after resampling, in voxels (may be fractional, as nnU-Net's).
        topology: strides, kernels, padded patch size.
        features: channels per encoder stage.
        blocks_encoder: convolutions (plain) or residual blocks (ResEnc) per encoder stage.
        blocks_decoder: convolutions per decoder stage.
        batch_size: patches per step.
        estimate: the network's feature-map elements for one sample (nnU-Net's VRAM proxy).
        reference: the preset's reference value scaled to its GPU memory, in the same units.
        batch_dice: nnU-Net's ``batch_dice`` flag.
    """

    name: str
    spacing: tuple[float, ...]
    median_shape: tuple[float, ...]
    topology: Topology
    features: tuple[int, ...]
    blocks_encoder: tuple[int, ...]
    blocks_decoder: tuple[int, ...]
    batch_size: int
    estimate: int
    reference: float
    batch_dice: bool = False

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.topology.patch_size


def feature_map_size(
    preset: PlannerPreset, topology: Topology, *, num_classes: int, max_features: int
) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """nnU-Net's VRAM proxy for ``preset``'s network on ``topology``: ``(elements, features, enc, dec blocks)``."""
    features, enc, dec = stage_layout(preset, topology, max_features=max_features)
    count = resenc_unet_feature_map_size if preset.residual else plain_unet_feature_map_size
    blocks_key = "n_blocks_per_stage" if preset.residual else "n_conv_per_stage"
    elements = count(topology.patch_size, features=features, strides=topology.strides, num_classes=num_classes,
                     n_conv_per_stage_decoder=dec, **{blocks_key: enc})  # fmt: skip
    return int(elements), features, enc, dec


def stage_layout(
    preset: PlannerPreset, topology: Topology, *, max_features: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``preset``'s network on ``topology``: ``(features per stage, encoder blocks, decoder blocks)``."""
    n = topology.n_stages
    features = features_per_stage(n, base=preset.base_features, maximum=max_features)
    return features, tuple(preset.blocks_encoder[:n]), tuple(preset.blocks_decoder[: n - 1])


def initial_patch_size(spacing: Sequence[float], median_shape: Sequence[float]) -> np.ndarray:
    """The starting patch: 256³ (2D: 2048²) voxels' volume, isotropic in mm, clipped to the median shape."""
    inverse = 1 / np.array(spacing)
    if len(spacing) == 3:
        start = [round(i) for i in inverse * (256**3 / np.prod(inverse)) ** (1 / 3)]
    else:
        start = [round(i) for i in inverse * (2048**2 / np.prod(inverse)) ** (1 / 2)]
    return np.array([min(i, j) for i, j in zip(start, median_shape[: len(spacing)], strict=True)])


def shrink_patch(spacing: Sequence[float], topology: Topology, median_shape: Sequence[float]) -> Topology:
    """One step of nnU-Net's patch reduction: the axis largest relative to the median shape loses one divisor step.

    The step is the divisor of the patch *after* a first trial step, so that sizes such as 224 (not a multiple of
    the 64 that 256 needs) are not skipped.
    """
    patch = list(topology.patch_size)
    axis = int(np.argsort([p / m for p, m in zip(patch, median_shape[: len(patch)], strict=True)])[-1])
    trial = list(patch)
    trial[axis] -= topology.divisible_by[axis]
    patch[axis] -= pool_and_conv_props(spacing, trial, min_edge=MIN_FEATURE_MAP_EDGE).divisible_by[axis]
    return pool_and_conv_props(spacing, patch, min_edge=MIN_FEATURE_MAP_EDGE)


def plan_configuration(
    preset: PlannerPreset,
    *,
    name: str,
    spacing: Sequence[float],
    median_shape: Sequence[float],
    n_voxels_dataset: float,
    num_classes: int,
) -> ConfigurationPlan:
    """Patch, topology and batch size of one configuration, as nnU-Net's ``get_plans_for_configuration``.

    Args:
        preset: the planner.
        name: the configuration's name.
        spacing: target spacing in mm (plan order, transposed).
        median_shape: median image shape at that spacing, in voxels (transposed).
        n_voxels_dataset: approximate voxels of the whole dataset at that spacing (median shape × cases).
        num_classes: declared labels including background.
    """
    is_3d = len(spacing) == 3
    max_features = preset.max_features_3d if is_3d else preset.max_features_2d
    ref_batch = preset.reference_batch_3d if is_3d else preset.reference_batch_2d
    reference = (preset.reference_3d if is_3d else preset.reference_2d) * (preset.gpu_memory_gb / preset.reference_gb)
    topology = pool_and_conv_props(spacing, initial_patch_size(spacing, median_shape), min_edge=MIN_FEATURE_MAP_EDGE)
    estimate, features, enc, dec = feature_map_size(preset, topology, num_classes=num_classes,
                                                    max_features=max_features)  # fmt: skip
    # The default planner compares the estimate scaled to the minimum batch of 2; the ResEnc planners do not.
    while (estimate / ref_batch * preset.min_batch_size if preset.min_batch_per_reference else estimate) > reference:
        topology = shrink_patch(spacing, topology, median_shape)
        estimate, features, enc, dec = feature_map_size(preset, topology, num_classes=num_classes,
                                                        max_features=max_features)  # fmt: skip
    batch = round(reference / estimate * ref_batch)
    cap = round(n_voxels_dataset * preset.max_dataset_covered / np.prod(topology.patch_size, dtype=np.float64))
    batch = max(min(batch, cap), preset.min_batch_size)
    return ConfigurationPlan(
        name=name,
        spacing=tuple(float(s) for s in spacing),
        median_shape=tuple(float(s) for s in median_shape),
        topology=topology,
        features=features,
        blocks_encoder=enc,
        blocks_decoder=dec,
        batch_size=int(batch),
        estimate=estimate,
        reference=float(reference),
    )


@dataclass(frozen=True)
class ExperimentPlan:
    """Everything a plans file holds (plan axis order).

    Attributes:
        dataset_name: nnU-Net's dataset name (``DatasetXXX_Name``, or the folder name).
        preset: the planner preset used.
        channel_names: image channels in order.
        num_classes: declared labels including background.
        transpose_forward, transpose_backward: axis permutation into and out of the configurations' order.
        original_median_spacing: median spacing before resampling, transposed (mm).
        original_median_shape: median shape after crop, transposed (voxels).
        configurations: by name, in nnU-Net's order (2d, 3d_lowres, 3d_fullres).
        fingerprint: the dataset fingerprint it was planned from.
        normalization_schemes, use_mask_for_norm: per channel.
    """

    dataset_name: str
    preset: PlannerPreset
    channel_names: tuple[str, ...]
    num_classes: int
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[int, ...]
    configurations: dict[str, ConfigurationPlan]
    fingerprint: DatasetFingerprint
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]


def plan_experiment(
    fingerprint: DatasetFingerprint,
    preset: PlannerPreset,
    *,
    dataset_name: str,
    channel_names: Sequence[str],
    num_classes: int,
    num_training: int,
) -> ExperimentPlan:
    """Plan a dataset as nnU-Net's ``plan_experiment`` does (2d, 3d_fullres and, when useful, 3d_lowres).

    Args:
        fingerprint: from :func:`segbench.plans.fingerprint.extract_fingerprint`.
        preset: the planner.
        dataset_name: written into the plans file.
        channel_names: channel (MSD: modality) names, which choose the normalization.
        num_classes: declared labels including background.
        num_training: labelled cases (nnU-Net's ``numTraining``).
    """
    target = fullres_target_spacing(fingerprint.spacings, fingerprint.shapes_after_crop)
    forward, backward = transpose_axes(target)
    pairs = zip(fingerprint.spacings, fingerprint.shapes_after_crop, strict=True)
    new_shapes = [compute_new_shape(shape, spacing, target) for spacing, shape in pairs]
    median_shape = np.median(new_shapes, 0)[forward]
    n_voxels = float(np.prod(median_shape, dtype=np.float64) * num_training)
    common = {"n_voxels_dataset": n_voxels, "num_classes": num_classes}
    configurations: dict[str, ConfigurationPlan] = {}
    configurations["2d"] = dataclasses.replace(
        plan_configuration(preset, name="2d", spacing=target[forward][1:], median_shape=median_shape[1:], **common),
        batch_dice=True,
    )
    if median_shape[0] != 1:
        fullres = plan_configuration(preset, name="3d_fullres", spacing=target[forward], median_shape=median_shape,
                                     **common)  # fmt: skip
        lowres = plan_lowres(preset, fullres, num_training=num_training, num_classes=num_classes)
        if lowres is not None:
            configurations["3d_lowres"] = lowres
        configurations["3d_fullres"] = dataclasses.replace(fullres, batch_dice=lowres is not None)
    schemes, use_mask = normalization_schemes(channel_names, fingerprint.median_relative_size_after_cropping)
    return ExperimentPlan(
        dataset_name=dataset_name,
        preset=preset,
        channel_names=tuple(channel_names),
        num_classes=num_classes,
        transpose_forward=tuple(forward),
        transpose_backward=tuple(backward),
        original_median_spacing=tuple(float(s) for s in np.median(fingerprint.spacings, 0)[forward]),
        original_median_shape=tuple(int(round(s)) for s in np.median(fingerprint.shapes_after_crop, 0)[forward]),
        configurations=configurations,
        fingerprint=fingerprint,
        normalization_schemes=schemes,
        use_mask_for_norm=use_mask,
    )


def plan_lowres(
    preset: PlannerPreset, fullres: ConfigurationPlan, *, num_training: int, num_classes: int
) -> ConfigurationPlan | None:
    """nnU-Net's 3d_lowres search: coarsen the spacing by 3 % steps (thick axes last) until a patch covers a quarter
    of the median image; ``None`` when full resolution already does, or when lowres images would not be at least
    half as large in voxels."""
    full_spacing = np.array(fullres.spacing)
    full_shape = np.array(fullres.median_shape)
    median_voxels = np.prod(full_shape, dtype=np.float64)
    patch_voxels = np.prod(fullres.patch_size, dtype=np.float64)
    spacing = full_spacing.copy()
    lowres = None
    while patch_voxels / median_voxels < LOWRES_CREATION_THRESHOLD:
        ratio = max(spacing) / spacing
        if np.any(ratio > 2):
            spacing[ratio > 2] *= LOWRES_SPACING_STEP
        else:
            spacing *= LOWRES_SPACING_STEP
        median_voxels = np.prod(full_spacing / spacing * full_shape, dtype=np.float64)
        lowres = plan_configuration(preset, name="3d_lowres", spacing=spacing,
                                    median_shape=tuple(round(i) for i in full_spacing / spacing * full_shape),
                                    n_voxels_dataset=float(np.prod(median_voxels) * num_training),
                                    num_classes=num_classes)  # fmt: skip
        patch_voxels = np.prod(lowres.patch_size, dtype=np.int64)
    if np.prod(full_shape, dtype=np.float64) / median_voxels < 2:
        return None
    return lowres
