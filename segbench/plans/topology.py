"""Network topology from spacing and patch size: nnU-Net v2's pooling rule, as pure functions.

Axes are in the plan's axis order (nnU-Net order, see :mod:`segbench.plans.fingerprint`); spacings in mm, sizes in
voxels. The rule (nnU-Net's ``get_pool_and_conv_props``): pool, stage after stage, every axis whose feature map is
still at least twice the minimum edge length and whose current spacing is within a factor 2 of the finest current
spacing; a lone poolable axis needs three times the minimum edge. An axis gets 3-wide kernels once its spacing comes
within a factor 2 of the finest one (1-wide before: thick slices are not convolved across until pooling has made the
in-plane spacing coarse enough). The bottleneck always gets 3-wide kernels. The patch is then padded up to a
multiple of ``2 ** pools`` per axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: nnU-Net's ``UNet_featuremap_min_edge_length``: the bottleneck's feature maps keep at least this many voxels per axis.
MIN_FEATURE_MAP_EDGE = 4
#: No limit on the number of poolings per axis (nnU-Net passes 999999).
UNLIMITED_POOLS = 999999


@dataclass(frozen=True)
class Topology:
    """The U-Net topology chosen for a patch.

    Attributes:
        pools_per_axis: how often each axis is halved.
        strides: per stage, the stride per axis (the first stage is all ones), as nnU-Net's ``strides``.
        kernel_sizes: per stage, the convolution kernel per axis (1 or 3), as nnU-Net's ``kernel_sizes``.
        patch_size: the patch padded to a multiple of :attr:`divisible_by`, in voxels.
        divisible_by: ``2 ** pools_per_axis``.
    """

    pools_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    divisible_by: tuple[int, ...]

    @property
    def n_stages(self) -> int:
        """Resolution stages of the encoder (poolings + 1)."""
        return len(self.strides)


def pad_to_multiple(shape: Sequence[float], divisors: Sequence[int]) -> tuple[int, ...]:
    """Each side of ``shape`` rounded up to a multiple of its divisor (a side already a multiple is kept).

    Sides may be fractional (a median shape); the result is integral.
    """
    return tuple(int(math.ceil(side / div) * div) for side, div in zip(shape, divisors, strict=True))


def pool_and_conv_props(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    *,
    min_edge: int = MIN_FEATURE_MAP_EDGE,
    max_pools: int = UNLIMITED_POOLS,
) -> Topology:
    """The topology nnU-Net v2 derives for ``spacing`` (mm) and a candidate ``patch_size`` (voxels, may be fractional).

    Returns:
        A :class:`Topology` whose ``patch_size`` is ``patch_size`` padded to a multiple of ``2 ** pools`` per axis.
    """
    dim = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    pools = [0] * dim
    kernel = [1] * dim
    strides: list[tuple[int, ...]] = [(1,) * dim]
    kernels: list[tuple[int, ...]] = []
    while True:
        axes = _poolable_axes(current_spacing, current_size, pools, min_edge, max_pools)
        if not axes:
            break
        finest = min(current_spacing)
        # Once 3-wide, an axis stays 3-wide; the comparison is with the finest spacing over all axes.
        kernel = [3 if k == 3 or current_spacing[d] / finest < 2 else 1 for d, k in enumerate(kernel)]
        for axis in axes:
            pools[axis] += 1
            current_spacing[axis] *= 2
            current_size[axis] = math.ceil(current_size[axis] / 2)
        strides.append(tuple(2 if d in axes else 1 for d in range(dim)))
        kernels.append(tuple(kernel))
    kernels.append((3,) * dim)
    divisible_by = tuple(2**p for p in pools)
    padded = pad_to_multiple(patch_size, divisible_by)
    return Topology(tuple(pools), tuple(strides), tuple(kernels), padded, divisible_by)


def _poolable_axes(spacing: list[float], size: list[float], pools: list[int], min_edge: int, max_pools: int) -> list:
    # Axes large enough to halve, then only those within a factor 2 of the finest spacing among them.
    axes = [d for d in range(len(spacing)) if size[d] >= 2 * min_edge]
    if not axes:
        return []
    finest = min(spacing[d] for d in axes)
    axes = [d for d in axes if spacing[d] / finest < 2 and pools[d] < max_pools]
    if len(axes) == 1 and size[axes[0]] < 3 * min_edge:
        return []  # one axis alone is only pooled while it stays clearly larger than the minimum edge
    return axes


def features_per_stage(n_stages: int, *, base: int = 32, maximum: int = 320) -> tuple[int, ...]:
    """Feature channels per stage: ``base`` doubled at every stage, capped at ``maximum`` (320 in 3D, 512 in 2D)."""
    return tuple(min(maximum, base * 2**i) for i in range(n_stages))
