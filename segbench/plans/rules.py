"""nnU-Net v2's dataset-level planning rules as pure functions: target spacing, transposition, normalization.

Everything is in the plan's axis order (see :mod:`segbench.plans.fingerprint`); spacings in mm, shapes in voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: An axis is "anisotropic" when its spacing exceeds 3× the coarsest other one (nnU-Net's ``ANISO_THRESHOLD``).
ANISOTROPY_THRESHOLD = 3
#: Normalization scheme by channel name (case-insensitive); any other name is z-scored.
NORMALIZATION_BY_CHANNEL_NAME = {
    "ct": "CTNormalization",
    "nonorm": "NoNormalization",
    "zscore": "ZScoreNormalization",
    "rescale_to_0_1": "RescaleTo01Normalization",
    "rgb_to_0_1": "RGBTo01Normalization",
}
DEFAULT_NORMALIZATION = "ZScoreNormalization"
#: Schemes that keep voxels outside the nonzero mask at 0 when normalizing inside it (only z-score does).
_MASKABLE = ("ZScoreNormalization",)
#: Below this median share of voxels kept by the nonzero crop, z-scoring uses the nonzero mask.
MASK_FOR_NORM_BELOW = 3 / 4


def fullres_target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """The 3d_fullres target spacing (mm): the per-axis median, except for thick-slice datasets.

    When the coarsest median axis is more than 3× coarser than every other *and* has fewer than a third of the
    voxels of every other axis (median shapes after crop), that axis gets the 10th percentile of its spacings
    instead of the median (never finer than the coarsest other axis, plus 1e-5): resampling every case to a thick
    median slice would throw away the slices of the finer cases.

    Args:
        spacings: per case, voxel size in mm.
        shapes: per case, voxels per axis after the nonzero crop.
    """
    spacings = np.vstack(spacings)
    target = np.percentile(spacings, 50, 0)
    target_size = np.percentile(np.vstack(shapes), 50, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    other_spacings = [target[i] for i in others]
    other_sizes = [target_size[i] for i in others]
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(other_spacings)
    aniso_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < min(other_sizes)
    if aniso_spacing and aniso_voxels:
        value = np.percentile(spacings[:, worst], 10)
        if value < max(other_spacings):
            value = max(max(other_spacings), value) + 1e-5
        target[worst] = value
    return target


def transpose_axes(target_spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """``(transpose_forward, transpose_backward)``: the coarsest axis first, the others in their order."""
    coarsest = int(np.argmax(target_spacing))
    forward = [coarsest] + [i for i in range(len(target_spacing)) if i != coarsest]
    backward = [forward.index(i) for i in range(len(target_spacing))]
    return forward, backward


def normalization_schemes(
    channel_names: Sequence[str], median_relative_size_after_cropping: float
) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """``(normalization_schemes, use_mask_for_norm)`` per channel, from the channel (MSD: modality) names.

    "CT" (any case) gets CT normalization, a few reserved names theirs, everything else z-score. Z-scored channels
    use the nonzero mask when the crop keeps less than 3/4 of the voxels (median over cases).
    """
    schemes = tuple(NORMALIZATION_BY_CHANNEL_NAME.get(name.casefold(), DEFAULT_NORMALIZATION) for name in channel_names)
    use_mask = median_relative_size_after_cropping < MASK_FOR_NORM_BELOW
    return schemes, tuple(bool(use_mask and s in _MASKABLE) for s in schemes)


def compute_new_shape(shape: Sequence[float], spacing: Sequence[float], new_spacing: Sequence[float]) -> np.ndarray:
    """Voxels per axis after resampling ``shape`` from ``spacing`` to ``new_spacing`` (rounded to integers)."""
    return np.array([int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape, strict=True)])
