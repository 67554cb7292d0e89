"""Tiny nnU-Net v2 raw datasets for plan tests, and nnU-Net's own planner / preprocessor run on them.

* :func:`write_ct_like`: one CT channel, two labels (organ + lesion), anisotropic with thick slices whose spacing
  varies between cases, air around a body that does not fill the field of view on every slice.
* :func:`write_mri_like`: two MRI channels, one label, near-isotropic with the coarsest axis first (nnU-Net's plan
  then transposes the axes), zero outside the head (nnU-Net then plans the masked z-score).
* :func:`nnunet_plans`: nnU-Net's fingerprint extraction + ``ExperimentPlanner`` in the reference interpreter
  (tests/nnunet_ref.py); returns the ``nnUNetPlans.json`` it wrote.
* :func:`nnunet_preprocessed`: nnU-Net's ``DefaultPreprocessor.run_case`` of every training case with that plan.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from msd_factory import write_volume

CT_SLICE_SPACINGS = (4.0, 5.0, 3.6, 4.4)  # thick, varying slices (mm)


def _dataset_json(root: Path, channels: dict[str, str], labels: dict[str, int], cases: int) -> None:
    meta = {"channel_names": channels, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((grid[a] - centre[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


def write_ct_like(root: Path, *, cases: int = 4, seed: int = 0, in_plane: int = 48) -> Path:
    """An nnU-Net raw dataset ``Dataset901_CTlike``: ``(in_plane, in_plane, slices)`` voxels of 0.7-0.85 mm in-plane."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(cases):
        thick = CT_SLICE_SPACINGS[i % len(CT_SLICE_SPACINGS)]
        slices = int(round(48 / thick))
        shape = (in_plane, in_plane, slices)
        c = np.asarray(shape, dtype=float) / 2 + rng.uniform(-2, 2, 3) * (1, 1, 0.2)
        body = _ellipsoid(shape, tuple(c), (in_plane * 0.42, in_plane * 0.36, slices * 2))
        organ = _ellipsoid(shape, tuple(c + (3, -2, 0)), (in_plane * 0.2, in_plane * 0.15, slices * 0.35))
        lesion = organ & _ellipsoid(shape, tuple(c + (5, -1, 0)), (in_plane * 0.07, in_plane * 0.07, slices * 0.2))
        image = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, shape)
        image[organ] = 90 + rng.normal(0, 10, organ.sum())
        image[lesion] = 160 + rng.normal(0, 10, lesion.sum())
        image[:3] = 0  # a zero border (table / padding outside the reconstruction) that cropping removes
        label = organ.astype(np.uint8) + lesion.astype(np.uint8)
        spacing = (0.7 + 0.05 * i, 0.7 + 0.05 * i, thick)  # in-plane spacing varies too: order-3 resampling
        write_volume(root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz", image.astype(np.int16), spacing=spacing)
        write_volume(root / "labelsTr" / f"ct_{i:03d}.nii.gz", label, spacing=spacing)
    _dataset_json(root, {"0": "CT"}, {"background": 0, "organ": 1, "lesion": 2}, cases)
    return root


def write_mri_like(root: Path, *, cases: int = 4, seed: int = 1, shape: tuple[int, int, int] = (40, 44, 36)) -> Path:
    """An nnU-Net raw dataset ``Dataset902_MRIlike``: two channels, zero outside an ellipsoidal head."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(cases):
        c = np.asarray(shape, dtype=float) / 2 + rng.uniform(-1.5, 1.5, 3)
        head = _ellipsoid(shape, tuple(c), tuple(np.asarray(shape) * 0.36))
        target = _ellipsoid(shape, tuple(c + (2, 1, -1)), tuple(np.asarray(shape) * 0.12))
        # The coarsest axis is nibabel's first (nnU-Net's last): the plan transposes; all three spacings vary.
        spacing = (1.37 + 0.05 * i, 1.25 - 0.02 * i, 1.2 + 0.03 * i)
        for ch, (base, contrast) in enumerate(((300.0, 250.0), (500.0, -200.0))):
            image = np.where(head, base + rng.normal(0, 30, shape), 0.0)
            image[target] += contrast
            write_volume(root / "imagesTr" / f"mr_{i:03d}_{ch:04d}.nii.gz", image.astype(np.float32),
                         spacing=spacing)  # fmt: skip
        write_volume(root / "labelsTr" / f"mr_{i:03d}.nii.gz", target.astype(np.uint8), spacing=spacing)
    _dataset_json(root, {"0": "T1", "1": "T2"}, {"background": 0, "target": 1}, cases)
    return root


_PLAN_SCRIPT = r"""
import sys
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
dataset_id = int(sys.argv[1])
DatasetFingerprintExtractor(dataset_id, num_processes=1, verbose=False).run()
ExperimentPlanner(dataset_id).plan_experiment()
"""

_PREPROCESS_SCRIPT = r"""
import json, os, sys
import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
raw, plans_file, configuration, out = sys.argv[1:5]
manager = PlansManager(plans_file)
cm = manager.get_configuration(configuration)
dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
channels = len(dataset_json["channel_names"])
for name in sorted(os.listdir(os.path.join(raw, "labelsTr"))):
    case = name[: -len(".nii.gz")]
    images = [os.path.join(raw, "imagesTr", f"{case}_{c:04d}.nii.gz") for c in range(channels)]
    data, seg, props = DefaultPreprocessor(verbose=False).run_case(
        images, os.path.join(raw, "labelsTr", name), manager, cm, dataset_json)
    np.savez(os.path.join(out, case + ".npz"), data=data, seg=seg[0],
             bbox=np.asarray(props["bbox_used_for_cropping"]))
print(json.dumps("ok"))
"""


def nnunet_env(base: Path) -> dict[str, str]:
    """nnU-Net's folder variables, all inside ``base``."""
    return {name: str(base / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}


def nnunet_plans(raw: Path, base: Path) -> Path:
    """Plan the raw dataset ``raw`` (``base/nnUNet_raw/Dataset9XX_Name``) with nnU-Net; its nnUNetPlans.json."""
    from nnunet_ref import run_nnunet

    dataset_id = str(int(raw.name[len("Dataset") : len("Dataset") + 3]))
    run_nnunet(_PLAN_SCRIPT, dataset_id, env=nnunet_env(base), timeout=600)
    return base / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json"


def nnunet_preprocessed(raw: Path, plans: Path, base: Path, out: Path, configuration: str = "3d_fullres") -> Path:
    """nnU-Net's DefaultPreprocessor on every training case of ``raw``: ``out/<case>.npz`` (data, seg, bbox)."""
    from nnunet_ref import run_nnunet_json

    out.mkdir(parents=True, exist_ok=True)
    run_nnunet_json(_PREPROCESS_SCRIPT, str(raw), str(plans), configuration, str(out), env=nnunet_env(base))
    return out


def hand_plans(
    *,
    dataset_name: str,
    spacing: tuple[float, float, float],
    patch_size: tuple[int, int, int] = (16, 16, 16),
    batch_size: int = 2,
    schemes: tuple[str, ...] = ("ZScoreNormalization",),
    median_spacing: tuple[float, float, float] | None = None,
    transpose_forward: tuple[int, int, int] = (0, 1, 2),
) -> dict:
    """A minimal plans file in nnU-Net v2's format (the keys ``segbench run --plans`` reads), spacing in nnU-Net's
    axis order (nibabel's reversed)."""
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}  # fmt: skip
    backward = [int(i) for i in np.argsort(transpose_forward)]
    return {
        "dataset_name": dataset_name,
        "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": list(median_spacing or spacing),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": backward,
        "configurations": {
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres",
                "preprocessor_name": "DefaultPreprocessor",
                "batch_size": batch_size,
                "patch_size": list(patch_size),
                "spacing": list(spacing),
                "normalization_schemes": list(schemes),
                "use_mask_for_norm": [False] * len(schemes),
                **resampling,
            },
            "3d_fullres_bs4": {"inherits_from": "3d_fullres", "batch_size": 4},
        },
        "foreground_intensity_properties_per_channel": {
            str(c): {"mean": 50.0, "std": 40.0, "percentile_00_5": -20.0, "percentile_99_5": 120.0}
            for c in range(len(schemes))
        },
    }


def write_plans(path: Path, plans: dict) -> Path:
    """Write ``plans`` as JSON at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plans, indent=2))
    return path
