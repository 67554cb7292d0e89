"""Axis order: plans are in nnU-Net's order, segbench's arrays in nibabel's.

nnU-Net reads NIfTI through SimpleITK, whose arrays are nibabel's array axes reversed, so a fingerprint's
spacings and shapes are segbench's reversed. A configuration's ``spacing`` and ``patch_size`` are moreover
transposed by the plan's ``transpose_forward`` (the coarsest axis first). These functions convert per-axis values
(spacing in mm, sizes in voxels) between the three orders.
"""

from __future__ import annotations

from collections.abc import Sequence


def to_plan_axes(values: Sequence) -> tuple:
    """segbench array-axis order -> the fingerprint's (nnU-Net's, untransposed) order: reversed."""
    return tuple(values)[::-1]


def from_plan_axes(values: Sequence) -> tuple:
    """The fingerprint's (nnU-Net's, untransposed) order -> segbench array-axis order: reversed."""
    return tuple(values)[::-1]


def configuration_to_array_axes(values: Sequence, transpose_backward: Sequence[int]) -> tuple:
    """A configuration's per-axis values (``spacing``, ``patch_size``; transposed) -> segbench array-axis order."""
    return from_plan_axes(tuple(values[i] for i in transpose_backward))


def array_to_configuration_axes(values: Sequence, transpose_forward: Sequence[int]) -> tuple:
    """segbench array-axis order -> a configuration's transposed order (the inverse of the function above)."""
    plan = to_plan_axes(values)
    return tuple(plan[i] for i in transpose_forward)
