"""Write tiny, real MSD and nnU-Net v2 raw dataset folders with nibabel, for tests.

Every file is a genuine ``.nii.gz`` written by nibabel (no mocks), so readers and validators see exactly
what they would see on disk. Volumes are small (16³ by default): a noisy image with a bright ball and a
label map of the same ball (value 1), so every training label has foreground.

Typical use::

    from msd_factory import write_msd, write_nnunet

    root = write_msd(tmp_path / "Task02_Heart", cases=("la_003", "la_004"), test_cases=("la_001",))
    root = write_nnunet(tmp_path / "Dataset002_Heart", channels=("T1", "T2"))

Tests then damage the folder on purpose (truncate a file, edit dataset.json, ...) and check how segbench
reacts. Helpers return paths so a test can find the file it wants to damage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

DEFAULT_SHAPE = (16, 16, 16)
DEFAULT_SPACING = (1.37, 1.25, 1.25)
DEFAULT_LABELS = {0: "background", 1: "left atrium"}


def write_volume(path: str | Path, array: np.ndarray, *, spacing: Sequence[float] = DEFAULT_SPACING) -> Path:
    """Write ``array`` (3D, or 4D channel-last) as NIfTI with a diagonal affine of ``spacing`` (mm).

    The dtype is kept, so float labels or NaN images can be written on purpose.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*map(float, spacing[:3]), 1.0])
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_zooms(tuple(float(s) for s in spacing[:3]) + (1.0,) * (np.ndim(array) - 3))
    nib.save(img, str(path))
    return path


def ball_label(shape: Sequence[int] = DEFAULT_SHAPE, *, radius: float | None = None) -> np.ndarray:
    """A ``uint8`` ``(D, H, W)`` map: 1 inside a centred ball (default radius a quarter of the smallest side)."""
    grid = np.indices(tuple(shape), dtype=float)
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    radius = min(shape) / 4 if radius is None else radius
    dist2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    return (dist2 <= radius**2).astype(np.uint8)


def noisy_image(label: np.ndarray, *, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Float32 image ``(D, H, W)`` (one channel) or ``(D, H, W, C)`` (MSD channel-last) showing ``label``."""
    rng = np.random.default_rng(seed)
    stack = [
        (100.0 * label + rng.normal(0.0, 10.0, label.shape) + 10.0 * c).astype(np.float32) for c in range(channels)
    ]
    return stack[0] if channels == 1 else np.stack(stack, axis=-1)


def write_msd(
    root: str | Path,
    *,
    cases: Sequence[str] = ("la_003", "la_004", "la_005"),
    test_cases: Sequence[str] = ("la_001",),
    channels: Sequence[str] = ("MRI",),
    labels: Mapping[int, str] = DEFAULT_LABELS,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    name: str = "Task02_Heart",
) -> Path:
    """Write an MSD-style task folder (dataset.json, imagesTr, labelsTr, imagesTs) and return ``root``.

    Multi-channel images are 4D channel-last files, as in the public MSD tarballs.
    """
    root = Path(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    label = ball_label(shape)
    for i, case in enumerate(cases):
        write_volume(
            root / "imagesTr" / f"{case}.nii.gz", noisy_image(label, seed=i, channels=len(channels)), spacing=spacing
        )
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label, spacing=spacing)
    for i, case in enumerate(test_cases):
        write_volume(
            root / "imagesTs" / f"{case}.nii.gz",
            noisy_image(label, seed=100 + i, channels=len(channels)),
            spacing=spacing,
        )
    meta = {
        "name": name,
        "description": "tiny test dataset written by tests/msd_factory.py",
        "tensorImageSize": "4D" if len(channels) > 1 else "3D",
        "modality": {str(i): c for i, c in enumerate(channels)},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(cases),
        "numTest": len(test_cases),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases],
        "test": [f"./imagesTs/{c}.nii.gz" for c in test_cases],
    }
    write_dataset_json(root, meta)
    return root


def write_nnunet(
    root: str | Path,
    *,
    cases: Sequence[str] = ("heart_001", "heart_002", "heart_003"),
    test_cases: Sequence[str] = ("heart_101",),
    channels: Sequence[str] = ("MRI",),
    labels: Mapping[int, str] = DEFAULT_LABELS,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] = DEFAULT_SPACING,
    file_ending: str = ".nii.gz",
) -> Path:
    """Write an nnU-Net v2 raw folder (``<case>_0000.nii.gz`` per channel, ``labelsTr/<case>.nii.gz``)."""
    root = Path(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    label = ball_label(shape)
    for folder, names, offset in (("imagesTr", cases, 0), ("imagesTs", test_cases, 100)):
        for i, case in enumerate(names):
            for c in range(len(channels)):
                image = noisy_image(label, seed=offset + 10 * i + c)
                write_volume(root / folder / f"{case}_{c:04d}{file_ending}", image, spacing=spacing)
    for case in cases:
        write_volume(root / "labelsTr" / f"{case}{file_ending}", label, spacing=spacing)
    meta = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {v: k for k, v in labels.items()},
        "numTraining": len(cases),
        "file_ending": file_ending,
    }
    write_dataset_json(root, meta)
    return root


def read_dataset_json(root: str | Path) -> dict:
    """The parsed ``root/dataset.json`` (for tests that edit it)."""
    return json.loads((Path(root) / "dataset.json").read_text())


def write_dataset_json(root: str | Path, meta: Mapping) -> Path:
    """Write ``meta`` as ``root/dataset.json``."""
    path = Path(root) / "dataset.json"
    path.write_text(json.dumps(meta, indent=2))
    return path


def prepared_case(tmp_path: Path, image: np.ndarray, label: np.ndarray, name: str = "case"):
    """Write ``image`` and ``label`` as NIfTI files (identity affine) and prepare them into ``tmp_path/cache``:
    the :class:`~segbench.data.preprocess.PreparedCase` that samplers read."""
    from segbench.data.dataset import Case
    from segbench.data.preprocess import PreprocessConfig, prepare_case

    paths = []
    for suffix, array in (("img", image), ("lab", label)):
        path = tmp_path / f"{name}_{suffix}.nii.gz"
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
        paths.append(path)
    return prepare_case(Case(name, (paths[0],), paths[1]), config=PreprocessConfig(), cache_dir=tmp_path / "cache")
