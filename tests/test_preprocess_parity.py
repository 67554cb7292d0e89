"""Parity with the real nnU-Net 2.8.1: plan preprocessing vs ``DefaultPreprocessor.run_case`` and the way back vs
``convert_predicted_logits_to_segmentation_with_correct_shape``, on a CT-like (anisotropic, thick slices of varying
spacing, two labels) and an MRI-like (two channels, masked z-score) dataset planned by nnU-Net's own
``ExperimentPlanner``; and ``segbench run --plans`` end to end with the plans file nnU-Net wrote.

Tier ``nnunet`` (``pytest -m nnunet tests/test_preprocess_parity.py``): nnU-Net runs in its own interpreter
(tests/nnunet_ref.py) and every test skips with the reason when it is absent.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nnunet_ref import run_nnunet_json, skip_without_nnunet
from preprocess_datasets import nnunet_env, nnunet_plans, nnunet_preprocessed, write_ct_like, write_mri_like
from scipy import ndimage

from segbench.data.dataset import load_case, load_dataset
from segbench.data.plan_preprocess import preprocess_with_plan, restore_labels
from segbench.plans.reader import read_plan

pytestmark = pytest.mark.nnunet

DATASETS = {"ct": ("Dataset901_CTlike", write_ct_like), "mri": ("Dataset902_MRIlike", write_mri_like)}
SHARE = 0.999  # the bar: segmentation equal / image within TOLERANCE in at least this share of voxels
TOLERANCE = 1e-3  # normalized units


@pytest.fixture(scope="module", params=sorted(DATASETS))
def planned(request, tmp_path_factory) -> dict:
    """A dataset, the plans file nnU-Net wrote for it and nnU-Net's preprocessed cases."""
    skip_without_nnunet()
    name, write = DATASETS[request.param]
    base = tmp_path_factory.mktemp(request.param)
    raw = write(base / "nnUNet_raw" / name)
    plans = nnunet_plans(raw, base)
    reference = nnunet_preprocessed(raw, plans, base, base / "reference")
    return {"kind": request.param, "raw": raw, "plans": plans, "base": base, "reference": reference}


def test_preprocessing_matches_nnunets_default_preprocessor(planned: dict):
    plan = read_plan(planned["plans"])
    if planned["kind"] == "mri":  # what the datasets exercise: masked z-score and transposed axes ...
        assert plan.transpose_forward != (0, 1, 2) and all(plan.use_mask_for_norm)
    else:  # ... CT normalization and the separate-z rule (thick axis first)
        assert plan.normalization_schemes == ("CTNormalization",) and plan.spacing[0] / plan.spacing[1] > 3
    figures = []
    for case in load_dataset(planned["raw"]).training:
        image, label = load_case(case)
        ours = preprocess_with_plan(image.array, label.array, image.spacing, plan)
        theirs = np.load(planned["reference"] / f"{case.case_id}.npz")
        assert ours.image.shape == theirs["data"].shape and ours.seg.shape == theirs["seg"].shape, case.case_id
        assert [list(b) for b in ours.bbox] == theirs["bbox"].tolist()
        seg_equal = float((ours.seg == theirs["seg"]).mean())
        close = float((np.abs(ours.image - theirs["data"]) <= TOLERANCE).mean())
        figures.append(
            (case.case_id, ours.image.shape, seg_equal, close, float(np.abs(ours.image - theirs["data"]).max()))
        )
    print(f"\n{planned['kind']} parity (case, shape, seg equal, image within {TOLERANCE}, max |diff|):")
    for row in figures:
        print("  ", *row)
    assert all(seg >= SHARE and img >= SHARE for _, _, seg, img, _ in figures), figures


_EXPORT_SCRIPT = r"""
import json, os, sys
import numpy as np, torch
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
raw, plans_file, folder = sys.argv[1:4]
manager = PlansManager(plans_file)
cm = manager.get_configuration("3d_fullres")
dataset_json = json.load(open(os.path.join(raw, "dataset.json")))
labels = manager.get_label_manager(dataset_json)
channels = len(dataset_json["channel_names"])
for name in sorted(f for f in os.listdir(folder) if f.endswith("_logits.npy")):
    case = name[: -len("_logits.npy")]
    images = [os.path.join(raw, "imagesTr", f"{case}_{c:04d}.nii.gz") for c in range(channels)]
    _, _, props = DefaultPreprocessor(verbose=False).run_case(images, None, manager, cm, dataset_json)
    logits = torch.from_numpy(np.load(os.path.join(folder, name)))
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(logits, manager, cm, labels, props,
                                                                      num_threads_torch=1)
    np.save(os.path.join(folder, case + "_seg.npy"), np.asarray(seg))
print(json.dumps("ok"))
"""


def _scores(seg: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """Smooth per-class scores on the preprocessed grid whose argmax is roughly ``seg`` (plus noise)."""
    rng = np.random.default_rng(seed)
    onehot = np.stack([np.maximum(seg, 0) == k for k in range(classes)]).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(channel, 1.0) for channel in onehot])
    return (8 * smooth + rng.normal(0, 0.3, smooth.shape)).astype(np.float32)


def test_predictions_go_back_to_the_source_geometry_as_nnunet_exports_them(planned: dict, tmp_path: Path):
    plan = read_plan(planned["plans"])
    dataset = load_dataset(planned["raw"])
    classes = len(dataset.foreground_labels) + 1
    ours = {}
    for i, case in enumerate(dataset.training):
        image, label = load_case(case)
        pre = preprocess_with_plan(image.array, label.array, image.spacing, plan)
        scores = _scores(pre.seg, classes, seed=i)
        np.save(tmp_path / f"{case.case_id}_logits.npy", scores)
        ours[case.case_id] = restore_labels(
            scores, axes=pre.axes, bbox=pre.bbox, plan_spacing=plan.spacing, source_spacing=pre.spacing,
            source_shape=label.spatial_shape, resampling=plan.probabilities_resampling,
        )  # fmt: skip
    run_nnunet_json(_EXPORT_SCRIPT, str(planned["raw"]), str(planned["plans"]), str(tmp_path),
                    env=nnunet_env(planned["base"]))  # fmt: skip
    shares = {}
    for case_id, labels in ours.items():
        theirs = np.load(tmp_path / f"{case_id}_seg.npy").transpose(2, 1, 0)  # nnU-Net's axis order reversed
        assert labels.shape == theirs.shape, case_id
        shares[case_id] = float((labels == theirs).mean())
    print(f"\n{planned['kind']} export parity (share of equal voxels): {shares}")
    assert all(share >= SHARE for share in shares.values()), shares


def test_run_with_a_plans_file_nnunet_wrote(planned: dict, tmp_path: Path):
    if planned["kind"] != "mri":
        pytest.skip("one end-to-end run suffices; the CT-like plan's patch (14 slices) does not suit fcn/unet's 4")
    # nnU-Net's preprocessed folder (plans, dataset.json, fingerprint), copied so that the test can edit the plan.
    folder = shutil.copytree(planned["plans"].parent, tmp_path / "preprocessed", ignore=shutil.ignore_patterns("*_3d*"))
    plans = folder / "nnUNetPlans.json"
    run_dir = tmp_path / "run"
    segbench = Path(sys.executable).parent / "segbench"
    args = ["run", "--data", str(planned["raw"]), "--plans", str(plans), "--iterations", "2", "--folds", "2",
            "--num-workers", "0", "--device", "cpu", "--out", str(run_dir), "--quiet"]  # fmt: skip
    proc = subprocess.run([str(segbench), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    plan = read_plan(plans)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["plans"]["sha256"] == plan.sha256 and manifest["plans"]["path"] == str(plans.resolve())
    assert manifest["config"]["train"]["patch_size"] == list(plan.patch_size)
    assert manifest["config"]["train"]["batch_size"] == plan.batch_size
    assert (run_dir / "plans.json").read_bytes() == plans.read_bytes()
    assert "nnUNetPlans for Dataset902_MRIlike" in (run_dir / "report" / "report.html").read_text()
    predictions = sorted((run_dir / "predictions" / "unet").glob("*.nii.gz"))
    assert len(predictions) == 4
    for prediction in predictions:  # in the source geometry, not the plan's
        source = nib.load(str(planned["raw"] / "labelsTr" / prediction.name))
        assert nib.load(str(prediction)).shape == source.shape
    # The plans file changes after the run started: resuming refuses, in one sentence naming it.
    edited = json.loads(plans.read_text())
    edited["configurations"]["3d_fullres"]["batch_size"] = 3
    plans.write_text(json.dumps(edited))
    proc = subprocess.run([str(segbench), "run", "--resume", "--out", str(run_dir)], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 1
    assert f"the plans file {plans.resolve()} changed since the run started" in proc.stderr, proc.stderr
