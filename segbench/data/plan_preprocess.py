"""Preprocessing from a plan, as nnU-Net v2's ``DefaultPreprocessor`` does it, and the way back for predictions.

Order of operations (nnU-Net's, which is the specification): bring the axes into the plan's order (transpose), crop to
the nonzero region, normalize each channel (CT: clip to the foreground 0.5/99.5 percentiles, then the dataset's
foreground mean/std; z-score: per image, inside the nonzero mask when ``use_mask_for_norm``), then resample to the
plan's spacing (images order 3, segmentations order 1 on the one-hot encoding, the separate-z rule; see
:mod:`segbench.data.resampling`). Normalizing first keeps the nonzero mask aligned with the image.

Axis order: segbench reads NIfTI with nibabel in the file's voxel order ``(i, j, k)``; nnU-Net's readers
(``SimpleITKIO``, ``NibabelIO``) hand it the reversed order ``(k, j, i)``, and a plan's spacing, patch and
``transpose_forward`` refer to that order. :func:`plan_axes` composes the two into one permutation of segbench's axes.

The way back (:func:`restore_labels`): per-class scores are resampled to the cropped shape (order 1, separate-z rule
with the plan's spacing as the current one), turned into labels, put back into the uncropped volume (background
outside the crop) and transposed into the original axis order, as nnU-Net exports a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from segbench.data.resampling import resample, resampled_shape
from segbench.inference import logits_to_labels

#: Value a cropped segmentation takes outside the nonzero mask where it was background (nnU-Net's ``nonzero_label``).
OUTSIDE_LABEL = -1
_EPS = 1e-8  # nnU-Net's guard against a zero standard deviation (float32 targets)


@dataclass(frozen=True)
class Resampling:
    """One of a plan's resampling settings (``resampling_fn_*_kwargs``)."""

    order: int
    order_z: int = 0
    force_separate_z: bool | None = None


def plan_axes(transpose_forward: Sequence[int]) -> tuple[int, ...]:
    """The permutation of segbench's (nibabel) axes that gives a plan's axis order: ``array.transpose(axes)``.

    nnU-Net's readers reverse nibabel's axes, then the plan applies ``transpose_forward`` to those.
    """
    return tuple(2 - int(a) for a in transpose_forward)


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels where any channel of ``image`` ``(C, D, H, W)`` is nonzero, holes filled: bool ``(D, H, W)``."""
    return ndimage.binary_fill_holes(np.any(image != 0, axis=0))


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Half-open ``(start, stop)`` per axis of the True voxels of ``mask``; the whole array when none is True."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def crop_to_nonzero(
    image: np.ndarray, label: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], ...]]:
    """Crop ``image`` ``(C, D, H, W)`` and ``label`` ``(D, H, W)`` to the bounding box of the nonzero mask.

    Returns:
        (cropped image, cropped segmentation ``(1, d, h, w)`` int16 where background outside the mask is
        :data:`OUTSIDE_LABEL`, the box). Without a label the segmentation is 0 inside the mask and -1 outside.
    """
    mask = nonzero_mask(image)
    box = bounding_box(mask)
    slicer = tuple(slice(a, b) for a, b in box)
    inside = mask[slicer]
    if label is None:
        seg = np.where(inside, 0, OUTSIDE_LABEL).astype(np.int16)
    else:
        seg = np.array(label[slicer], dtype=np.int16)
        seg[(seg == 0) & ~inside] = OUTSIDE_LABEL
    return image[(slice(None), *slicer)], seg[None], box


def normalize_channel(
    channel: np.ndarray, seg: np.ndarray, *, scheme: str, use_mask: bool, intensities: dict[str, float] | None
) -> np.ndarray:
    """One channel normalized as nnU-Net's scheme ``scheme`` (a plan's ``normalization_schemes`` entry); float32.

    Args:
        channel: ``(D, H, W)`` intensities.
        seg: ``(D, H, W)`` cropped segmentation; ``seg >= 0`` is the region a masked z-score uses.
        scheme: ``ZScoreNormalization``, ``CTNormalization``, ``NoNormalization``, ``RescaleTo01Normalization`` or
            ``RGBTo01Normalization``.
        use_mask: z-score inside ``seg >= 0`` only (voxels outside keep their values).
        intensities: the channel's ``foreground_intensity_properties_per_channel`` (CT needs ``mean``, ``std``,
            ``percentile_00_5``, ``percentile_99_5``).

    Raises:
        ValueError: an unknown scheme, or CT without intensity properties.
    """
    image = np.array(channel, dtype=np.float32)
    if scheme == "ZScoreNormalization":
        region = seg >= 0 if use_mask else slice(None)
        values = image[region].astype(np.float64)
        image[region] = (values - values.mean()) / max(values.std(), _EPS)
    elif scheme == "CTNormalization":
        if not intensities:
            raise ValueError("CTNormalization needs the plan's foreground intensity properties of the channel")
        np.clip(image, intensities["percentile_00_5"], intensities["percentile_99_5"], out=image)
        image -= intensities["mean"]
        image /= max(float(intensities["std"]), _EPS)
    elif scheme == "RescaleTo01Normalization":
        image -= image.min()
        image /= max(float(image.max()), _EPS)
    elif scheme == "RGBTo01Normalization":
        image /= 255.0
    elif scheme != "NoNormalization":
        raise ValueError(f"unknown normalization scheme {scheme!r}")
    return image


@dataclass(frozen=True)
class PlannedCase:
    """A case preprocessed with a plan (arrays in the plan's axis order).

    Attributes:
        image: ``(C, *shape)`` float32, normalized and resampled.
        seg: ``(*shape)`` int16 label values, :data:`OUTSIDE_LABEL` outside the nonzero region (``None`` unlabelled).
        axes: the permutation of the source's axes into the plan's order (:func:`plan_axes`).
        bbox: the crop, in the plan's axis order, on the transposed source grid.
        cropped_shape: the shape after cropping, before resampling.
        spacing: the source spacing in the plan's axis order (mm).
    """

    image: np.ndarray
    seg: np.ndarray | None
    axes: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    cropped_shape: tuple[int, ...]
    spacing: tuple[float, ...]


def preprocess_with_plan(
    image: np.ndarray, label: np.ndarray | None, spacing: Sequence[float], plan: Any
) -> PlannedCase:
    """Preprocess one case as nnU-Net's ``DefaultPreprocessor.run_case`` with ``plan``.

    Args:
        image: ``(C, D, H, W)`` in segbench's (nibabel) axis order.
        label: ``(D, H, W)`` label values, or ``None``.
        spacing: the source spacing in the same order (mm).
        plan: a :class:`segbench.plans.reader.PlanSettings` (``transpose_forward``, ``spacing``,
            ``normalization_schemes``, ``use_mask_for_norm``, ``intensity_properties``, ``data_resampling``,
            ``seg_resampling``).

    Raises:
        ValueError: the plan's channel count differs from the image's.
    """
    if len(plan.normalization_schemes) != image.shape[0]:
        raise ValueError(f"the plan normalizes {len(plan.normalization_schemes)} channel(s), the image has "
                         f"{image.shape[0]}")  # fmt: skip
    axes = plan_axes(plan.transpose_forward)
    data = np.asarray(image, dtype=np.float32).transpose((0, *(a + 1 for a in axes)))
    label = None if label is None else np.asarray(label).transpose(axes)
    source_spacing = tuple(float(spacing[a]) for a in axes)
    data, seg, bbox = crop_to_nonzero(data, label)
    cropped_shape = tuple(int(n) for n in data.shape[1:])
    shape = resampled_shape(cropped_shape, source_spacing, plan.spacing)
    data = np.stack([
        normalize_channel(data[c], seg[0], scheme=plan.normalization_schemes[c], use_mask=plan.use_mask_for_norm[c],
                          intensities=plan.intensity_properties[c])
        for c in range(data.shape[0])
    ])  # fmt: skip
    data = resample(data, shape, source_spacing, plan.spacing, **_kwargs(plan.data_resampling))
    seg = resample(seg, shape, source_spacing, plan.spacing, is_seg=True, **_kwargs(plan.seg_resampling))
    return PlannedCase(
        image=np.ascontiguousarray(data, dtype=np.float32),
        seg=None if label is None else np.ascontiguousarray(seg[0]),
        axes=axes,
        bbox=bbox,
        cropped_shape=cropped_shape,
        spacing=source_spacing,
    )


def _kwargs(resampling: Resampling) -> dict[str, Any]:
    return {"order": resampling.order, "order_z": resampling.order_z, "force_separate_z": resampling.force_separate_z}


def restore_labels(
    logits: torch.Tensor | np.ndarray,
    *,
    axes: Sequence[int],
    bbox: Sequence[Sequence[int]],
    plan_spacing: Sequence[float],
    source_spacing: Sequence[float],
    source_shape: Sequence[int],
    resampling: Resampling,
) -> np.ndarray:
    """Class indices in the source geometry from per-class scores on a plan-preprocessed grid.

    Args:
        logits: ``(K, *planned shape)`` scores in the plan's axis order (K = 1: one sigmoid channel).
        axes: the permutation used when preprocessing (:func:`plan_axes`).
        bbox: the crop (plan axis order).
        plan_spacing: the plan's spacing (plan axis order, mm).
        source_spacing: the source spacing in the plan's axis order (mm).
        source_shape: the source's spatial shape in segbench's axis order.
        resampling: the plan's ``resampling_fn_probabilities_kwargs``.

    Returns:
        ``(*source_shape)`` uint8 class indices (0 background, also outside the crop).
    """
    scores = _on_cropped_source_grid(logits, bbox, plan_spacing, source_spacing, resampling)
    classes = logits_to_labels(torch.from_numpy(scores))
    transposed_shape = tuple(int(source_shape[a]) for a in axes)
    full = np.zeros(transposed_shape, dtype=np.uint8)
    full[tuple(slice(int(a), int(b)) for a, b in bbox)] = classes
    return np.ascontiguousarray(full.transpose(np.argsort(axes)))


def restore_scores(
    scores: torch.Tensor | np.ndarray,
    *,
    axes: Sequence[int],
    bbox: Sequence[Sequence[int]],
    plan_spacing: Sequence[float],
    source_spacing: Sequence[float],
    source_shape: Sequence[int],
    resampling: Resampling,
) -> np.ndarray:
    """Per-class scores (e.g. probabilities) in the source geometry, as :func:`restore_labels` without the argmax.

    Outside the crop every voxel is background: channel 0 is 1 and the others 0 (a single sigmoid channel is 0).

    Returns:
        ``(K, *source_shape)`` float32.
    """
    cropped = _on_cropped_source_grid(scores, bbox, plan_spacing, source_spacing, resampling)
    channels = cropped.shape[0]
    full = np.zeros((channels, *(int(source_shape[a]) for a in axes)), dtype=np.float32)
    if channels > 1:
        full[0] = 1.0
    full[(slice(None), *(slice(int(a), int(b)) for a, b in bbox))] = cropped
    return np.ascontiguousarray(full.transpose(0, *(1 + np.argsort(axes))))


def _on_cropped_source_grid(scores, bbox, plan_spacing, source_spacing, resampling: Resampling) -> np.ndarray:
    """``(K, *cropped source shape)``: scores resampled from the plan's grid to the crop of the source grid."""
    array = torch.as_tensor(scores).float().cpu().numpy()
    cropped = tuple(int(b) - int(a) for a, b in bbox)
    return np.ascontiguousarray(resample(array, cropped, plan_spacing, source_spacing, **_kwargs(resampling)))
