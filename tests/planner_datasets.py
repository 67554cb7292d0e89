"""Small generated datasets for planner tests (real NIfTI files via tests/msd_factory.py's writer).

Each builder writes a dataset folder and returns its root. Sizes are in segbench's (nibabel's) array-axis order;
the planner's (nnU-Net's) order is reversed. Images and spacings vary per case where the planner's rules care.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from msd_factory import write_dataset_json, write_volume


def _blobs(shape: Sequence[int], n_labels: int, rng: np.random.Generator) -> np.ndarray:
    # Nested boxes: label k lies inside label k-1, so every label is present.
    label = np.zeros(shape, dtype=np.uint8)
    for k in range(1, n_labels + 1):
        lo = [int(s * (0.15 + 0.1 * k) + rng.integers(0, 2)) for s in shape]
        hi = [max(lo_ + 1, int(s * (0.85 - 0.1 * k))) for lo_, s in zip(lo, shape, strict=True)]
        label[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = k
    return label


def _image(label: np.ndarray, rng: np.random.Generator, *, base: float, scale: float, border: int) -> np.ndarray:
    image = (base + scale * label + rng.normal(0, scale / 5, label.shape)).astype(np.float32)
    if border:  # a zero frame, as skull-stripped MRI: the nonzero crop removes it
        frame = np.ones(label.shape, dtype=bool)
        frame[border:-border, border:-border, :] = False
        image[frame] = 0
    return image


def write_raw(
    root: Path,
    *,
    shapes: Sequence[Sequence[int]],
    spacings: Sequence[Sequence[float]],
    channels: Sequence[str] = ("MRI",),
    n_labels: int = 1,
    base: float = 100.0,
    scale: float = 50.0,
    border: int = 0,
    seed: int = 0,
) -> Path:
    """An nnU-Net v2 raw dataset, one case per (shape, spacing) pair."""
    rng = np.random.default_rng(seed)
    for i, (shape, spacing) in enumerate(zip(shapes, spacings, strict=True)):
        label = _blobs(shape, n_labels, rng)
        for c in range(len(channels)):
            image = _image(label, rng, base=base + 20 * c, scale=scale, border=border)
            write_volume(root / "imagesTr" / f"case_{i:03d}_{c:04d}.nii.gz", image, spacing=spacing)
        write_volume(root / "labelsTr" / f"case_{i:03d}.nii.gz", label, spacing=spacing)
    labels = {"background": 0, **{f"label{k}": k for k in range(1, n_labels + 1)}}
    meta = {"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": labels,
            "numTraining": len(shapes), "file_ending": ".nii.gz"}  # fmt: skip
    write_dataset_json(root, meta)
    return root


def write_msd_multichannel(root: Path, *, shapes, spacings, channels=("T1", "FLAIR"), seed: int = 0) -> Path:
    """An MSD task folder with 4D channel-last images (as the public MSD tarballs)."""
    rng = np.random.default_rng(seed)
    (root / "imagesTs").mkdir(parents=True, exist_ok=True)  # nnU-Net's MSD converter insists on it
    training = []
    for i, (shape, spacing) in enumerate(zip(shapes, spacings, strict=True)):
        label = _blobs(shape, 2, rng)
        image = np.stack([_image(label, rng, base=80 + 30 * c, scale=40, border=2) for c in range(len(channels))], -1)
        write_volume(root / "imagesTr" / f"brain_{i:03d}.nii.gz", image, spacing=spacing)
        write_volume(root / "labelsTr" / f"brain_{i:03d}.nii.gz", label, spacing=spacing)
        training.append({"image": f"./imagesTr/brain_{i:03d}.nii.gz", "label": f"./labelsTr/brain_{i:03d}.nii.gz"})
    meta = {"name": root.name, "tensorImageSize": "4D", "modality": {str(i): c for i, c in enumerate(channels)},
            "labels": {"0": "background", "1": "edema", "2": "tumour"}, "numTraining": len(training),
            "numTest": 0, "training": training, "test": []}  # fmt: skip
    write_dataset_json(root, meta)
    return root


#: name -> (folder name, builder): the parity datasets of docs/plans.md.
DATASETS = {
    # Isotropic MRI-like with a zero frame (crop keeps < 3/4: z-score inside the mask); shapes vary.
    "mri_isotropic": (
        "Dataset501_MriIso",
        lambda root: write_raw(
            root,
            shapes=[(56, 52, 48), (60, 56, 44), (52, 56, 52)],
            spacings=[(1.0, 1.0, 1.0)] * 3,
            channels=("T2",),
            border=10,
        ),  # fmt: skip
    ),
    # CT-like: thick slices (array axis 0) whose spacing varies between cases; three labels (organ, lesion, core).
    "ct_anisotropic": (
        "Dataset502_CtAniso",
        lambda root: write_raw(
            root,
            shapes=[(14, 64, 60), (10, 60, 64), (18, 64, 64), (12, 56, 60), (16, 60, 56)],
            spacings=[(4.0, 0.7, 0.7), (5.0, 0.75, 0.75), (2.5, 0.7, 0.7), (5.0, 0.8, 0.8), (3.0, 0.7, 0.7)],
            channels=("CT",),
            n_labels=3,
            base=-200.0,
            scale=150.0,
        ),  # fmt: skip
    ),
    # Two channels, in MSD format (4D channel-last files), planned by nnU-Net after its own MSD conversion.
    "two_channels_msd": (
        "Task503_TwoChannels",
        lambda root: write_msd_multichannel(
            root, shapes=[(40, 44, 36), (44, 40, 36), (40, 40, 40)], spacings=[(1.2, 1.0, 1.0)] * 3
        ),  # fmt: skip
    ),
    # Large in-plane, few slices: smaller than the initial patch along one axis; the patch loop has to shrink.
    "small_axis": (
        "Dataset504_SmallAxis",
        lambda root: write_raw(
            root,
            shapes=[(288, 272, 10), (272, 288, 12), (280, 280, 10)],
            spacings=[(0.9, 0.9, 1.1)] * 3,
            channels=("MRI",),
            n_labels=2,
        ),  # fmt: skip
    ),
}


def build(name: str, parent: Path) -> Path:
    """Write dataset ``name`` of :data:`DATASETS` under ``parent``; returns its folder."""
    folder, builder = DATASETS[name]
    return builder(parent / folder)


def _intensity(mean: float, std: float) -> dict:
    return {"mean": mean, "median": mean, "std": std, "min": mean - 4 * std, "max": mean + 4 * std,
            "percentile_99_5": mean + 2.6 * std, "percentile_00_5": mean - 2.6 * std}  # fmt: skip


def _fingerprint(spacings, shapes, relative: float, channels: int = 1) -> dict:
    """A dataset_fingerprint.json document in nnU-Net's axis order."""
    return {"spacings": [list(map(float, s)) for s in spacings], "shapes_after_crop": [list(s) for s in shapes],
            "foreground_intensity_properties_per_channel": {str(c): _intensity(100.0 + c, 20.0)
                                                            for c in range(channels)},
            "median_relative_size_after_cropping": relative}  # fmt: skip


#: name -> (channel names, labels incl. background, fingerprint in nnU-Net's axis order): real-sized datasets planned
#: from a fingerprint alone (no images to read), for the patch loop, the batch rule and 3d_lowres.
FINGERPRINTS = {
    # Abdominal CT: 400² slices, slice thickness 1.25-5 mm, 30-80 slices: shrink loop, 3d_lowres, the 5 % cap.
    "ct_abdomen": (
        ("CT",),
        3,
        _fingerprint(
            [(5.0, 0.78, 0.78), (2.5, 0.7, 0.7), (1.25, 0.82, 0.82), (5.0, 0.74, 0.74), (3.0, 0.68, 0.68)] * 6,
            [(30, 400, 400), (60, 384, 400), (80, 400, 400), (40, 400, 392), (50, 400, 400)] * 6,
            1.0,
        ),
    ),
    # Isotropic brain MRI, 1 mm, two channels, zero background: shrink loop on all axes, masked z-score.
    "brain_mri": (
        ("T1", "FLAIR"),
        4,
        _fingerprint(
            [(1.0, 1.0, 1.0)] * 8, [(138, 170, 139), (140, 172, 136), (134, 168, 140), (142, 176, 138)] * 2, 0.6, 2
        ),
    ),
    # Cardiac cine MRI: 10 mm slices, about 10 slices: the thick-slice rule and a tiny anisotropic patch.
    "cardiac": (
        ("cineMRI",),
        4,
        _fingerprint(
            [(10.0, 1.56, 1.56), (6.5, 1.37, 1.37), (10.0, 1.25, 1.25), (5.0, 1.45, 1.45)] * 25,
            [(9, 256, 216), (16, 232, 256), (10, 224, 180), (18, 256, 216)] * 25,
            0.98,
        ),
    ),
    # Thick axis in the middle of the array, many cases: transposition and large ResEnc batches.
    "mid_thick": (("nonorm",), 2, _fingerprint([(0.5, 3.0, 0.5)] * 40, [(96, 20, 96), (100, 22, 90)] * 20, 0.9)),
}


def write_fingerprint_datasets(tmp: Path, cases: Sequence[str], *, first_id: int = 600) -> tuple[dict, dict]:
    """nnU-Net folders for planning ``cases`` of :data:`FINGERPRINTS` from their fingerprints alone.

    nnU-Net's planner reads ``dataset.json`` and opens one image per channel (to choose its reader); ``numTraining`` is
    the case count. Returns ``({case: nnU-Net dataset name}, {nnUNet_raw, nnUNet_preprocessed, nnUNet_results})``.
    """
    names = {}
    for i, key in enumerate(cases):
        channels, n_labels, fingerprint = FINGERPRINTS[key]
        name = names[key] = f"Dataset{first_id + i}_{key.replace('_', '')}"
        raw = tmp / "raw" / name
        for c in range(len(channels)):
            write_volume(raw / "imagesTr" / f"case_000_{c:04d}.nii.gz", np.zeros((4, 4, 4), np.float32))
        write_volume(raw / "labelsTr" / "case_000.nii.gz", np.zeros((4, 4, 4), np.uint8))
        meta = {"channel_names": {str(c): n for c, n in enumerate(channels)},
                "labels": {"background": 0, **{f"l{k}": k for k in range(1, n_labels)}},
                "numTraining": len(fingerprint["spacings"]), "file_ending": ".nii.gz"}  # fmt: skip
        (raw / "dataset.json").write_text(json.dumps(meta))
        (tmp / "pre" / name).mkdir(parents=True)
        (tmp / "pre" / name / "dataset_fingerprint.json").write_text(json.dumps(fingerprint))
    env = {"nnUNet_raw": str(tmp / "raw"), "nnUNet_preprocessed": str(tmp / "pre"), "nnUNet_results": str(tmp / "r")}
    return names, env


def plan_fingerprint(case: str, preset: str):
    """segbench's plan (an ExperimentPlan) of ``case`` of :data:`FINGERPRINTS` with ``preset`` (dataset ``case``)."""
    from segbench.plans import DatasetFingerprint, get_preset, plan_experiment

    channels, n_labels, fingerprint = FINGERPRINTS[case]
    return plan_experiment(DatasetFingerprint.from_json(fingerprint), get_preset(preset), dataset_name=case,
                           channel_names=channels, num_classes=n_labels,
                           num_training=len(fingerprint["spacings"]))  # fmt: skip
