"""The nnunet recipe's augmentation: nnU-Net 2.8.1's training transforms, built with batchgeneratorsv2.

The specification is ``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size`` (rotation range,
the dummy-2D rule, the larger initial patch and the mirror axes), ``nnUNetTrainer.get_training_transforms`` (the
transforms, their probabilities and ranges) and ``_get_deep_supervision_scales``. The transforms themselves are
batchgeneratorsv2's, configured as nnU-Net configures them; none is re-implemented here.

One deliberate difference: nnU-Net builds its Gaussian blur with ``benchmark=True``, which times an FFT and a direct
convolution per (shape, kernel size) in each loader process and keeps the faster. The two differ in the last bits,
and the choice depends on the timing, so a batch would no longer be a function of ``(seed, index)`` alone (common
random numbers, :mod:`segbench.recipes.nnunet_sampling`); segbench always takes the direct convolution
(``benchmark=False``). The blur kernels are small (sigma ≤ 1), where the direct convolution is the faster one anyway.

batchgeneratorsv2 is an optional dependency (``pip install 'segbench[nnunet]'``): it is imported only when a pipeline
is built (:func:`training_transforms`, :func:`validation_transforms`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segbench.errors import ConfigError

#: A 3D patch whose largest edge exceeds this many times its first (out-of-plane) edge is augmented slice-wise in 2D
#: (nnU-Net's ``ANISO_THRESHOLD``).
ANISO_THRESHOLD = 3
#: The scale range nnU-Net's initial patch size is computed with (not the one the spatial transform samples from).
INITIAL_PATCH_SCALES = (0.85, 1.25)

__all__ = [
    "ANISO_THRESHOLD",
    "AugmentationSettings",
    "augmentation_settings",
    "deep_supervision_scales",
    "initial_patch_size",
    "training_transforms",
    "validation_transforms",
]


@dataclass(frozen=True)
class AugmentationSettings:
    """What nnU-Net derives from the patch size before it builds the transforms.

    Attributes:
        patch_size: the plan's patch (D, H, W), what the network sees.
        rotation: the rotation range in radians, symmetric ``(-a, a)``.
        dummy_2d: augment spatially in-plane only (slice-wise 2D), for anisotropic patches.
        initial_patch_size: the larger patch cut from the volume before the spatial transform (room for rotation
            and scaling); its first edge is ``patch_size[0]`` with ``dummy_2d``.
        mirror_axes: the spatial axes mirrored in training (and at inference).
    """

    patch_size: tuple[int, int, int]
    rotation: tuple[float, float]
    dummy_2d: bool
    initial_patch_size: tuple[int, int, int]
    mirror_axes: tuple[int, ...]


def augmentation_settings(patch_size: Sequence[int]) -> AugmentationSettings:
    """nnU-Net's rotation range, dummy-2D rule, initial patch size and mirror axes for a 3D patch.

    The dummy-2D rule looks at the patch, not the spacing: ``max(patch) / patch[0] > 3``. Such patches rotate by up to
    180° in-plane, the others by up to 30° about each axis.

    Raises:
        ConfigError: the patch is not three positive sizes.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise ConfigError(f"the nnunet recipe needs a 3D patch of positive sizes, got {tuple(patch_size)}")
    dummy_2d = max(patch) / patch[0] > ANISO_THRESHOLD
    degrees = 180.0 if dummy_2d else 30.0
    rotation = (-degrees / 360 * 2.0 * np.pi, degrees / 360 * 2.0 * np.pi)
    initial = initial_patch_size(patch, rotation)
    if dummy_2d:
        initial = (patch[0], *initial[1:])
    return AugmentationSettings(patch, rotation, dummy_2d, initial, (0, 1, 2))  # type: ignore[arg-type]


def initial_patch_size(
    patch_size: Sequence[int], rotation: tuple[float, float], scales: tuple[float, float] = INITIAL_PATCH_SCALES
) -> tuple[int, ...]:
    """The patch to cut so that rotating (by at most 90° about each axis in turn) and shrinking the final patch
    stays inside it (nnU-Net's ``get_patch_size``).

    Per axis of rotation, the patch's extent vector is rotated by the largest angle (capped at 90°); the result is
    the element-wise largest absolute extent, divided by the smallest scale and truncated.
    """
    angle = min(max(abs(a) for a in rotation), math.pi / 2)
    extent = np.asarray(patch_size, dtype=float)
    largest = extent.copy()
    cos, sin = np.cos(angle), np.sin(angle)
    for axis in range(3):
        # The extent as a row vector times the rotation about `axis` (a rotation in the plane of the other two).
        matrix = np.identity(3)
        a, b = [k for k in range(3) if k != axis]
        sign = -1.0 if axis == 1 else 1.0  # the rotation about the middle axis turns the other way round
        matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = cos, -sign * sin, sign * sin, cos
        largest = np.maximum(largest, np.abs(extent @ matrix))
    return tuple(int(v) for v in (largest / min(scales)))


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[tuple[float, ...]]:
    """Scale of each deep-supervision output relative to the patch, full resolution first (nnU-Net's
    ``_get_deep_supervision_scales``): the inverse cumulative product of the plan's strides, the last stage dropped.

    Args:
        strides: the plan's per-stage strides (``pool_op_kernel_sizes``), the first usually ``[1, 1, 1]``.
    """
    cumulative = np.cumprod(np.vstack([np.asarray(s, dtype=float) for s in strides]), axis=0)
    return [tuple(float(v) for v in 1 / row) for row in cumulative[:-1]]


def _bg2() -> Any:
    """The batchgeneratorsv2 modules the pipeline uses, as one namespace-like dict.

    Raises:
        ConfigError: batchgeneratorsv2 is not installed.
    """
    names = {
        "basic": "transforms.base.basic_transform", "brightness": "transforms.intensity.brightness",
        "contrast": "transforms.intensity.contrast", "gamma": "transforms.intensity.gamma",
        "noise": "transforms.intensity.gaussian_noise", "blur": "transforms.noise.gaussian_blur",
        "lowres": "transforms.spatial.low_resolution", "mirror": "transforms.spatial.mirroring",
        "spatial": "transforms.spatial.spatial", "compose": "transforms.utils.compose",
        "ds": "transforms.utils.deep_supervision_downsampling", "mask": "transforms.utils.nnunet_masking",
        "pseudo2d": "transforms.utils.pseudo2d", "random": "transforms.utils.random",
        "remove": "transforms.utils.remove_label",
    }  # fmt: skip
    try:
        return {key: importlib.import_module(f"batchgeneratorsv2.{path}") for key, path in names.items()}
    except ImportError as exc:
        raise ConfigError(
            f"the nnunet recipe's augmentation needs batchgeneratorsv2 ({exc}); install it with "
            "pip install 'segbench[nnunet]'"
        ) from None


def training_transforms(
    settings: AugmentationSettings,
    *,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    use_mask_for_norm: Sequence[bool] | None = None,
) -> Any:
    """nnU-Net's training pipeline for one sample (a batchgeneratorsv2 ``ComposeTransforms``).

    Call it as ``pipeline(image=(C, *initial_patch) float32 tensor, segmentation=(1, *initial_patch) int16 tensor)``
    with class indices and -1 outside the volume; it returns ``image`` ``(C, *patch)`` and ``segmentation``
    ``(1, *patch)`` (-1 turned into 0), or a list of those per deep-supervision scale. Its random draws come from
    numpy's and torch's global generators.

    Args:
        settings: from :func:`augmentation_settings` (patch, rotation, dummy 2D, mirror axes).
        deep_supervision_scales: :func:`deep_supervision_scales`, or ``None`` without deep supervision.
        use_mask_for_norm: the plan's per-channel flags; channels normalised inside the nonzero mask get 0 where
            the segmentation is negative.

    Raises:
        ConfigError: batchgeneratorsv2 is not installed.
    """
    bg = _bg2()
    transforms = _spatial(bg, settings)
    transforms += _intensity(bg, ignore_axes=(0,) if settings.dummy_2d else None)
    transforms.append(bg["mirror"].MirrorTransform(allowed_axes=settings.mirror_axes))
    return bg["compose"].ComposeTransforms(transforms + _targets(bg, deep_supervision_scales, use_mask_for_norm))


def validation_transforms(deep_supervision_scales: Sequence[Sequence[float]] | None = None) -> Any:
    """nnU-Net's validation pipeline (no augmentation): -1 to 0, then the deep-supervision targets.

    Raises:
        ConfigError: batchgeneratorsv2 is not installed.
    """
    bg = _bg2()
    return bg["compose"].ComposeTransforms(_targets(bg, deep_supervision_scales, None))


def _spatial(bg: dict, settings: AugmentationSettings) -> list:
    """Rotation (p 0.2) and isotropic scaling 0.7–1.4 (p 0.2), cropping the initial patch to the patch; in-plane
    only (between the 3D→2D→3D reshapes) with ``dummy_2d``."""
    patch = settings.patch_size[1:] if settings.dummy_2d else settings.patch_size
    spatial = bg["spatial"].SpatialTransform(
        list(patch), patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
        p_rotation=0.2, rotation=settings.rotation, p_scaling=0.2, scaling=(0.7, 1.4),
        p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, border_mode_seg="constant",
        padding_value_seg=-1,
    )  # fmt: skip
    if not settings.dummy_2d:
        return [spatial]
    return [bg["pseudo2d"].Convert3DTo2DTransform(), spatial, bg["pseudo2d"].Convert2DTo3DTransform()]


def _intensity(bg: dict, *, ignore_axes: tuple[int, ...] | None) -> list:
    """Noise, blur, brightness, contrast, simulated low resolution, inverted and plain gamma, each behind its
    probability."""
    random, contrast = bg["random"].RandomTransform, bg["contrast"]
    return [
        random(bg["noise"].GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_channel=1,
                                                  synchronize_channels=True), apply_probability=0.1),
        random(bg["blur"].GaussianBlurTransform(blur_sigma=(0.5, 1.0), synchronize_channels=False,
                                                synchronize_axes=False, p_per_channel=0.5, benchmark=False),
               apply_probability=0.2),
        random(bg["brightness"].MultiplicativeBrightnessTransform(
            multiplier_range=contrast.BGContrast((0.75, 1.25)), synchronize_channels=False, p_per_channel=1),
            apply_probability=0.15),
        random(contrast.ContrastTransform(contrast_range=contrast.BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.15),
        random(bg["lowres"].SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_channels=False,
                                                           synchronize_axes=True, ignore_axes=ignore_axes,
                                                           allowed_channels=None, p_per_channel=0.5),
               apply_probability=0.25),
        random(bg["gamma"].GammaTransform(gamma=contrast.BGContrast((0.7, 1.5)), p_invert_image=1,
                                          synchronize_channels=False, p_per_channel=1, p_retain_stats=1),
               apply_probability=0.1),
        random(bg["gamma"].GammaTransform(gamma=contrast.BGContrast((0.7, 1.5)), p_invert_image=0,
                                          synchronize_channels=False, p_per_channel=1, p_retain_stats=1),
               apply_probability=0.3),
    ]  # fmt: skip


def _targets(bg: dict, scales: Sequence[Sequence[float]] | None, use_mask_for_norm: Sequence[bool] | None) -> list:
    """Masking of mask-normalised channels, -1 (outside) to background, deep-supervision target downsampling."""
    transforms: list = []
    if use_mask_for_norm is not None and any(use_mask_for_norm):
        channels = [c for c, masked in enumerate(use_mask_for_norm) if masked]
        transforms.append(bg["mask"].MaskImageTransform(apply_to_channels=channels, channel_idx_in_seg=0,
                                                        set_outside_to=0))  # fmt: skip
    transforms.append(bg["remove"].RemoveLabelTansform(-1, 0))
    if scales is not None:
        transforms.append(bg["ds"].DownsampleSegForDSTransform(ds_scales=[list(s) for s in scales]))
    return transforms
