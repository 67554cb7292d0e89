"""Case geometry from NIfTI headers only, as the jobs will see it: prepared shapes, windows, padding.

Reading a header costs a few kilobytes of gzip, so the cost estimate and the patch warnings know every case's shape
before any image is decoded. Shapes are in array-axis order (D, H, W) like :mod:`segbench.data.nifti`; with a target
spacing they are the resampled shapes :mod:`segbench.data.preprocess` will produce.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from segbench.errors import DatasetError


@dataclass(frozen=True)
class CaseGeometry:
    """One case as a job sees it.

    Attributes:
        case_id: the dataset's case id.
        shape: spatial shape of the prepared arrays (after resampling to the target spacing, if any).
        spacing: voxel size of the prepared arrays in mm.
        original_shape: spatial shape of the source image.
        channels: image channels.
    """

    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    original_shape: tuple[int, int, int]
    channels: int

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


def read_geometry(cases: Sequence, *, target_spacing: Sequence[float] | None = None) -> list[CaseGeometry]:
    """Geometry of ``cases`` (objects with ``case_id`` and ``images`` paths) from their first image's header.

    Raises:
        DatasetError: a header cannot be read.
    """
    import nibabel as nib

    from segbench.data.preprocess import resampled_shape

    found = []
    for case in cases:
        path = case.images[0]
        try:
            header = nib.load(os.fspath(path)).header
        except Exception as exc:  # nibabel raises many types for a bad header
            raise DatasetError(f"{path} is not a readable NIfTI file ({exc})") from None
        dims = tuple(int(s) for s in header.get_data_shape())
        spacing = tuple(float(z) for z in header.get_zooms()[:3])
        original = dims[:3]
        channels = dims[3] if len(dims) == 4 else 1
        channels *= len(case.images)  # nnU-Net raw: one file per channel
        shape, new_spacing = original, spacing
        if target_spacing is not None:
            shape, new_spacing = resampled_shape(original, spacing, target_spacing), tuple(target_spacing)
        found.append(CaseGeometry(case.case_id, shape, new_spacing, original, channels))  # type: ignore[arg-type]
    return found


def padded_shape(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, ...]:
    """The shape sliding-window prediction works on: each side at least the patch side (zero padding)."""
    return tuple(max(int(s), int(p)) for s, p in zip(shape, patch, strict=True))


def window_count(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """Windows :func:`segbench.inference.sliding_window_predict` runs over an image of ``shape``."""
    from segbench.inference import window_corners

    return len(window_corners(padded_shape(shape, patch), patch, overlap))


def padding_share(shape: Sequence[int], patch: Sequence[int]) -> float:
    """Share of a padded image's voxels that are padding (0 when the patch fits inside the image)."""
    return 1.0 - math.prod(shape) / math.prod(padded_shape(shape, patch))


def oversized_patch_warning(geometry: Sequence[CaseGeometry], patch: Sequence[int]) -> str | None:
    """A warning when ``patch`` is larger than some image along an axis, naming the smallest such image and what
    its padding costs; ``None`` when the patch fits inside every image."""
    smaller = [case for case in geometry if any(s < p for s, p in zip(case.shape, patch, strict=True))]
    if not smaller:
        return None
    smallest = min(smaller, key=lambda case: (case.voxels, case.case_id))
    axes = [f"{name} {s} < {p}" for name, s, p in zip("DHW", smallest.shape, patch, strict=True) if s < p]
    share = padding_share(smallest.shape, patch)
    others = f"; {len(smaller) - 1} other case(s) are smaller too" if len(smaller) > 1 else ""
    return (
        f"--patch {' '.join(map(str, patch))} is larger than case {smallest.case_id} "
        f"({'x'.join(map(str, smallest.shape))} voxels; {', '.join(axes)}){others}: its training patches and "
        f"prediction windows are zero-padded, {share:.0%} of each window of it is padding (computed, then cropped "
        "off); choose a patch within the smallest image to avoid it"
    )
