"""Resampling as nnU-Net v2 does it (``resample_data_or_seg_to_shape``), written on ``scipy.ndimage``.

nnU-Net's default resampling is the specification:

* Voxels are cells: output voxel ``o`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5`` (``grid_mode``), edge
  values repeat outside the volume, and the result is clipped to the input's range (spline orders >= 2 overshoot).
  This is scikit-image's ``resize(mode="edge", anti_aliasing=False)``, which itself is ``scipy.ndimage.zoom``.
* Images use spline order 3, per-class scores order 1, segmentations order 1 on their one-hot encoding: each label's
  indicator is interpolated and every voxel takes the label with the highest score; an exact tie goes to the
  nearest-neighbour label when it is among the tied ones.
* The separate-z rule: when the old (else the new) spacing is anisotropic (largest / smallest > 3) and exactly one
  axis is the thick one, each slice across that axis is resampled in 2D with the order above and the thick axis with
  order ``order_z`` (0: the nearest slice), so that thick slices are not smeared into each other.

Arrays are channel-first ``(C, *spatial)``; every spacing is in the arrays' axis order, in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: nnU-Net's ANISO_THRESHOLD: a spacing is anisotropic when its largest side exceeds this many times its smallest.
ANISOTROPY_THRESHOLD = 3.0


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The shape covering the same extent at ``target`` spacing: ``round(spacing / target * size)`` per axis."""
    if not len(shape) == len(spacing) == len(target):
        raise ValueError(f"shape {tuple(shape)}, spacing {tuple(spacing)} and target {tuple(target)} differ in length")
    # The same floating-point expression as nnU-Net's compute_new_shape, so that a borderline .5 rounds alike.
    return tuple(int(round(s / t * n)) for n, s, t in zip(shape, spacing, target, strict=True))


def _thick_axis_of(spacing: Sequence[float], threshold: float) -> int | None | bool:
    """The thick axis of an anisotropic spacing; ``None`` when several axes share the largest spacing; ``False`` when
    the spacing is not anisotropic."""
    values = np.asarray(spacing, dtype=float)
    if not values.max() / values.min() > threshold:
        return False
    thick = np.flatnonzero(values == values.max())
    return int(thick[0]) if len(thick) == 1 else None


def thick_axis(
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    force_separate_z: bool | None = None,
    threshold: float = ANISOTROPY_THRESHOLD,
) -> int | None:
    """The axis resampled on its own (separate-z rule), or ``None`` to resample all axes together.

    Args:
        spacing: the current spacing (mm).
        target: the new spacing (mm).
        force_separate_z: a plan's override: ``True`` uses the thick axis of ``spacing`` whatever the ratio,
            ``False`` never separates, ``None`` applies the rule (``spacing`` first, else ``target``).
        threshold: the anisotropy ratio.
    """
    if force_separate_z is False:
        return None
    if force_separate_z:
        values = np.asarray(spacing, dtype=float)
        thick = np.flatnonzero(values == values.max())
        return int(thick[0]) if len(thick) == 1 else None
    for candidate in (spacing, target):
        axis = _thick_axis_of(candidate, threshold)
        if axis is not False:
            return axis  # an int, or None when two axes tie for the thick one (nnU-Net then does not separate)
    return None


def zoom_like_resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``array`` (any dimensionality, float64) resampled to ``shape`` with cell-centred coordinates, edge values
    repeated outside and the result clipped to the input's range; returns float64."""
    array = np.asarray(array, dtype=np.float64)
    zoom = [n_out / n_in for n_in, n_out in zip(array.shape, shape, strict=True)]
    out = ndimage.zoom(array, zoom, order=order, mode="nearest", grid_mode=True)
    if out.shape != tuple(shape):  # cannot happen for in/out ratios of real images; guards the rounding assumption
        raise ValueError(f"resampling to {tuple(shape)} produced {out.shape}")
    np.clip(out, array.min(), array.max(), out=out)
    return out


def zoom_labels(seg: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """A label map resampled to ``shape``: order 0 is the nearest neighbour; order >= 1 interpolates each label's
    indicator and keeps the label with the highest score, an exact tie going to the nearest-neighbour label."""
    nearest = zoom_like_resize(seg, shape, 0).astype(seg.dtype)
    labels = np.unique(seg)
    if order == 0 or labels.size == 1:
        return nearest
    best = np.full(tuple(shape), -1.0)
    winner = np.zeros(tuple(shape), dtype=seg.dtype)
    nearest_score = np.zeros(tuple(shape))
    for label in labels:  # ascending: a tie without the nearest label goes to the smallest label (argmax)
        score = zoom_like_resize(seg == label, shape, order)
        better = score > best
        winner[better] = label
        np.maximum(best, score, out=best)
        is_nearest = nearest == label
        nearest_score[is_nearest] = score[is_nearest]
    tie_to_nearest = (nearest_score == best) & (best > 0)
    winner[tie_to_nearest] = nearest[tie_to_nearest]
    return winner


def _slice_index(n_in: int, n_out: int) -> np.ndarray:
    """Input slice nearest to each output slice (order 0 along one axis), rounded exactly as
    ``map_coordinates(order=0)`` rounds nnU-Net's coordinates ``(o + 0.5) * n_in / n_out - 0.5``."""
    coordinates = float(n_in) / n_out * (np.arange(n_out) + 0.5) - 0.5
    return ndimage.map_coordinates(
        np.arange(n_in, dtype=np.float64), coordinates[None], order=0, mode="nearest"
    ).astype(np.intp)


def _resample_channel(channel: np.ndarray, shape: tuple[int, ...], axis: int | None, order: int, is_seg: bool):
    zoom = zoom_labels if is_seg else zoom_like_resize
    if axis is None:
        return zoom(channel, shape, order)
    in_plane = tuple(n for a, n in enumerate(shape) if a != axis)
    # Slice by slice across the thick axis (each slice clipped to its own range, as nnU-Net's 2D resizes are).
    slices = [zoom(np.take(channel, k, axis=axis), in_plane, order) for k in range(channel.shape[axis])]
    stacked = np.stack(slices, axis=axis)
    if channel.shape[axis] == shape[axis]:
        return stacked
    return np.take(stacked, _slice_index(channel.shape[axis], shape[axis]), axis=axis)


def resample(
    data: np.ndarray,
    shape: Sequence[int],
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = None,
) -> np.ndarray:
    """Resample ``data`` ``(C, *spatial)`` to ``(C, *shape)`` as nnU-Net's ``resample_data_or_seg_to_shape``.

    Args:
        data: images or per-class scores (float) or a label map (integer, ``is_seg=True``), channel first.
        shape: the new spatial shape.
        spacing: the current spacing (mm), which with ``target`` decides the separate-z rule.
        target: the new spacing (mm).
        is_seg: a label map: one-hot interpolation of order ``order`` with the argmax (see :func:`zoom_labels`).
        order: spline order in-plane (3 images, 1 segmentations and per-class scores).
        order_z: order along the thick axis under the separate-z rule; only 0 (nearest slice, nnU-Net's default
            in every preset) is supported.
        force_separate_z: the plan's ``force_separate_z`` (``None`` applies the rule).

    Returns:
        ``data``'s dtype (float images come back float32 when given float32), shape ``(C, *shape)``; ``data`` itself
        when the shape does not change.

    Raises:
        ValueError: ``data`` is not channel-first 4-D, or ``order_z`` is not 0.
    """
    shape = tuple(int(n) for n in shape)
    if data.ndim != 4 or len(shape) != 3:
        raise ValueError(f"expected data (C, D, H, W) and a 3-D shape, got {data.shape} and {shape}")
    if order_z != 0:
        raise ValueError(f"order_z={order_z}: only 0 (nearest slice along the thick axis) is supported")
    if tuple(data.shape[1:]) == shape:
        return data
    axis = thick_axis(spacing, target, force_separate_z=force_separate_z)
    out = np.empty((data.shape[0], *shape), dtype=data.dtype)
    for c in range(data.shape[0]):
        out[c] = _resample_channel(data[c], shape, axis, order, is_seg)
    return out
