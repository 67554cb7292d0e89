"""NIfTI reading and writing through nibabel, in array-axis order.

Conventions used everywhere in segbench:

* Spatial axes are the array axes as nibabel returns them (called D, H, W); spacing is
  ``header.get_zooms()[:3]`` in the same order, in millimetres.
* Images are channel-first ``float32`` arrays of shape ``(C, D, H, W)``. MSD stores multi-modal images as
  4D channel-last files ``(D, H, W, C)``; they are moved to channel-first here.
* Labels are integer arrays ``(D, H, W)``. A float label file holding integral values is accepted;
  non-integral values raise :class:`~segbench.errors.DatasetError`.
* The affine is kept so predictions can be written back in the original geometry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from segbench.atomic import atomic_write_bytes
from segbench.errors import DatasetError


@dataclass(frozen=True)
class Volume:
    """An array with its geometry.

    Attributes:
        array: image ``(C, D, H, W)`` float32, or label ``(D, H, W)`` integer.
        spacing: voxel size in mm, array-axis order, length 3.
        affine: 4×4 voxel-to-world matrix from the file.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]


def _load(path: Path) -> nib.spatialimages.SpatialImage:
    try:
        return nib.load(os.fspath(path))
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    except Exception as exc:  # nibabel raises many types for a bad header
        raise DatasetError(f"{path} is not a readable NIfTI file ({exc})") from None


def _read_array(path: Path, img: nib.spatialimages.SpatialImage) -> np.ndarray:
    try:
        # asanyarray(dataobj) decompresses the whole file: a truncated .nii.gz fails here.
        return np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError depending on the damage
        raise DatasetError(f"{path} is truncated or corrupted ({exc.__class__.__name__}: {exc})") from None


def _spacing(img: nib.spatialimages.SpatialImage) -> tuple[float, float, float]:
    zooms = img.header.get_zooms()
    return (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def read_image(path: str | Path) -> Volume:
    """Read an image as channel-first float32 ``(C, D, H, W)``.

    3D files give ``C = 1``; 4D files are MSD channel-last ``(D, H, W, C)`` and are transposed.

    Raises:
        DatasetError: missing, unreadable, truncated file or unsupported dimensionality.
    """
    path = Path(path)
    img = _load(path)
    data = _read_array(path, img)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise DatasetError(f"{path} has {data.ndim} dimensions; expected a 3D or 4D (channel-last) image")
    return Volume(np.ascontiguousarray(data, dtype=np.float32), _spacing(img), np.asarray(img.affine, dtype=float))


def read_label(path: str | Path) -> Volume:
    """Read a label map as an integer ``(D, H, W)`` array (``uint8`` when values fit, else ``int32``).

    Raises:
        DatasetError: unreadable file, not 3D, non-finite or non-integral values, negative labels.
    """
    path = Path(path)
    img = _load(path)
    data = _read_array(path, img)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path} has shape {data.shape}; a label map must be 3D")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all():
            raise DatasetError(f"{path} contains NaN or infinite label values")
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise DatasetError(f"{path} contains non-integral label values; labels must be integers")
        data = rounded
    if data.size and data.min() < 0:
        raise DatasetError(f"{path} contains negative label values")
    dtype = np.uint8 if (data.size == 0 or data.max() <= 255) else np.int32
    return Volume(np.ascontiguousarray(data, dtype=dtype), _spacing(img), np.asarray(img.affine, dtype=float))


def write_nifti(path: str | Path, array: np.ndarray, *, affine: np.ndarray, spacing=None) -> Path:
    """Write ``array`` (``(D, H, W)`` label or image) with ``affine`` atomically as NIfTI (.nii or .nii.gz).

    Args:
        path: output file; ``.nii.gz`` is compressed.
        array: 3D array; integer arrays keep their dtype, bool becomes uint8.
        affine: 4×4 voxel-to-world matrix (the source image's affine to keep its geometry).
        spacing: optional zooms to set explicitly (defaults to those implied by the affine).

    Raises:
        OSError: the write failed.
    """
    path = Path(path)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    if spacing is not None:
        img.header.set_zooms(tuple(float(s) for s in spacing)[: array.ndim])
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return atomic_write_bytes(path, nifti_bytes(img, path))


def nifti_bytes(img: nib.Nifti1Image, path: str | Path) -> bytes:
    """The file content of ``img`` for ``path``: gzip-compressed when the name ends in ``.gz``."""
    return _gz_bytes(img) if Path(path).name.endswith(".gz") else img.to_bytes()


def _gz_bytes(img: nib.Nifti1Image) -> bytes:
    import gzip

    # compresslevel 1: predictions are written per case; level 9 costs ~5x the time for ~10% size.
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
