"""``segbench run --plans``: reading a plans file, refusing one that does not fit, the cache keyed by the plan, the way
back to the source geometry (fast tier; parity with nnU-Net itself is in test_preprocess_parity.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from msd_factory import read_dataset_json, write_dataset_json, write_nnunet
from preprocess_datasets import hand_plans, write_plans

from segbench.data.dataset import load_dataset
from segbench.data.plan_preprocess import plan_axes, preprocess_with_plan
from segbench.data.preprocess import PreprocessConfig, labels_in_source_geometry, prepare_case
from segbench.data.resampling import resample, thick_axis, zoom_labels
from segbench.errors import ConfigError
from segbench.plans.reader import check_plan_fits, fit_problems, read_plan
from segbench.runner import manifest_differences

SPACING = (1.37, 1.25, 1.25)  # nibabel order, as msd_factory writes it
NNUNET_SPACING = SPACING[::-1]  # the same in nnU-Net's (reversed) axis order
SEGBENCH = Path(sys.executable).parent / "segbench"


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory) -> Path:
    """A 4-case nnU-Net raw dataset of 16³ volumes."""
    root = tmp_path_factory.mktemp("raw") / "Dataset905_Tiny"
    return write_nnunet(root, cases=("t_001", "t_002", "t_003", "t_004"), test_cases=(), spacing=SPACING)


def _plans(tmp_path: Path, name: str = "nnUNetPlans.json", **overrides) -> Path:
    settings = {"dataset_name": "Dataset905_Tiny", "spacing": NNUNET_SPACING, **overrides}
    return write_plans(tmp_path / name, hand_plans(**settings))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SEGBENCH), "run", *args], capture_output=True, text=True, timeout=300)


def test_read_plan_resolves_inheritance_and_hashes_the_file(tmp_path: Path):
    path = _plans(tmp_path, patch_size=(16, 16, 12))
    plan = read_plan(path)
    assert plan.patch_size == (16, 16, 12) and plan.batch_size == 2 and plan.spacing == NNUNET_SPACING
    child = read_plan(path, "3d_fullres_bs4")
    assert child.batch_size == 4 and child.patch_size == plan.patch_size  # inherited, one key overridden
    assert plan.sha256 == child.sha256 and len(plan.sha256) == 64
    with pytest.raises(ConfigError, match="--configuration 3d_lowres is not in the plans file .* 3d_fullres"):
        read_plan(path, "3d_lowres")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(patch_size=[16, 16]), "is not a 3D configuration"),
        (lambda c: c.update(preprocessor_name="MyPreprocessor"), "DefaultPreprocessor"),
        (lambda c: c.update(resampling_fn_data="resample_torch_fornnunet"), "resampling function"),
        (lambda c: c.update(normalization_schemes=["Histogram"]), "unknown normalization scheme"),
        (lambda c: c["resampling_fn_seg_kwargs"].update(order_z=1), "order_z 1"),
    ],
)
def test_a_plan_segbench_cannot_follow_is_refused(tmp_path: Path, edit, message):
    plans = hand_plans(dataset_name="Dataset905_Tiny", spacing=NNUNET_SPACING)
    edit(plans["configurations"]["3d_fullres"])
    with pytest.raises(ConfigError, match=message):
        read_plan(write_plans(tmp_path / "p.json", plans))


def test_a_fitting_plan_passes_and_each_mismatch_is_named(tiny_raw: Path, tmp_path: Path):
    dataset = load_dataset(tiny_raw)
    good = _plans(tmp_path)
    assert fit_problems(read_plan(good), good, dataset) == []
    two = _plans(tmp_path, "two.json", schemes=("ZScoreNormalization", "CTNormalization"))
    assert fit_problems(read_plan(two), two, dataset) == ["it plans 2 channel(s) but the dataset has 1 (MRI)"]
    other = _plans(tmp_path, "other.json", dataset_name="Dataset004_Hippocampus")
    assert fit_problems(read_plan(other), other, dataset) == [
        "it was made for dataset Dataset004_Hippocampus, not Dataset905_Tiny"
    ]
    moved = _plans(tmp_path, "moved.json", median_spacing=(3.0, 1.25, 1.25))
    [problem] = fit_problems(read_plan(moved), moved, dataset)
    assert "median spacing of 3 x 1.25 x 1.25 mm, the dataset's is 1.25 x 1.25 x 1.37 mm" in problem
    # nnU-Net's dataset.json and fingerprint beside the plans file (nnUNet_preprocessed/DatasetXXX) are compared too.
    beside = tmp_path / "preprocessed" / "Dataset905_Tiny"
    plans = _plans(beside)
    meta = read_dataset_json(tiny_raw)
    write_dataset_json(beside, {**meta, "labels": {"background": 0, "heart": 1, "scar": 2}})
    (beside / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [list(NNUNET_SPACING)] * 3}))
    problems = fit_problems(read_plan(plans), plans, dataset)
    assert problems == ["its dataset.json declares the labels [1, 2], the dataset [1]",
                        "its dataset_fingerprint.json has 3 cases, the dataset 4"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"^--plans .* does not fit the dataset .*: its dataset.json declares"):
        check_plan_fits(read_plan(plans), plans, dataset)


@pytest.mark.slow
def test_run_refuses_a_plans_file_that_does_not_fit_in_one_sentence(tiny_raw: Path, tmp_path: Path):
    plans = hand_plans(dataset_name="Dataset905_Tiny", spacing=NNUNET_SPACING)
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["CTNormalization", "CTNormalization"]
    plans["configurations"]["3d_fullres"]["use_mask_for_norm"] = [False, False]
    path = write_plans(tmp_path / "edited.json", plans)
    run_dir = tmp_path / "run"
    proc = _run("--data", str(tiny_raw), "--plans", str(path), "--iterations", "1", "--folds", "2",
                "--out", str(run_dir), "--quiet")  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == [
        f"error: --plans {path} does not fit the dataset {tiny_raw}: it plans 2 channel(s) but the dataset has 1 "
        "(MRI); plan this dataset with `segbench plan` (or nnU-Net) and pass that file"
    ]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "manifest.json").exists()


def test_cache_entries_are_keyed_by_the_plan(tiny_raw: Path, tmp_path: Path):
    case = load_dataset(tiny_raw).training[0]
    cache = tmp_path / "cache"
    first = read_plan(_plans(tmp_path, "a.json"))
    second = read_plan(_plans(tmp_path, "b.json", batch_size=3))  # same preprocessing, another plan
    a = prepare_case(case, config=PreprocessConfig(plan=first), cache_dir=cache)
    b = prepare_case(case, config=PreprocessConfig(plan=second), cache_dir=cache)
    plain = prepare_case(case, config=PreprocessConfig(), cache_dir=cache)
    assert len({a.image_path.parent, b.image_path.parent, plain.image_path.parent}) == 3
    again = prepare_case(case, config=PreprocessConfig(plan=read_plan(_plans(tmp_path, "c.json"))), cache_dir=cache)
    assert again.image_path.parent == a.image_path.parent  # an identical plans file is the same plan
    assert a.plan_axes == (2, 1, 0) and a.crop_bbox is not None and np.load(a.label_path).dtype == np.uint8


def test_resume_refuses_a_plans_file_whose_content_changed():
    from segbench.config import RunConfig, config_to_dict

    record = {"path": "/data/nnUNetPlans.json", "sha256": "a" * 64, "configuration": "3d_fullres"}
    config = config_to_dict(RunConfig(plans=record["path"]))
    manifest = {"config": config, "models": ["unet"], "dataset": {"fingerprint": "f", "path": "d"}}
    same = manifest_differences({**manifest, "plans": record}, {**manifest, "plans": dict(record)})
    assert same == []
    changed = manifest_differences({**manifest, "plans": record}, {**manifest, "plans": {**record, "sha256": "b" * 64}})
    assert changed == ["the plans file /data/nnUNetPlans.json changed since the run started (its SHA-256 differs from "
                       "the copy in plans.json)"]  # fmt: skip


def test_a_stored_config_without_the_plan_keys_resumes():
    from segbench.config import RunConfig, config_to_dict

    new = config_to_dict(RunConfig())
    old = {k: v for k, v in new.items() if k not in ("plans", "configuration")}  # written before --plans existed
    base = {"models": ["unet"], "dataset": {"fingerprint": "f", "path": "d"}}
    assert manifest_differences({**base, "config": old}, {**base, "config": new}) == []


def test_separate_z_rule():
    assert thick_axis((4.0, 0.8, 0.8), (3.0, 0.8, 0.8)) == 0  # anisotropic source: its thick axis
    assert thick_axis((1.0, 1.0, 1.0), (1.0, 1.0, 3.5)) == 2  # else an anisotropic target
    assert thick_axis((1.0, 1.0, 1.2), (1.0, 1.0, 1.0)) is None  # isotropic enough: all axes together
    assert thick_axis((4.0, 4.0, 0.8), (4.0, 4.0, 0.8)) is None  # two thick axes: nnU-Net does not separate
    assert thick_axis((1.0, 1.0, 1.2), (1.0, 1.0, 1.0), force_separate_z=True) == 2


def test_thick_axis_takes_the_nearest_slice_and_in_plane_is_order_3():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 4, 10, 10)).astype(np.float32)
    out = resample(data, (8, 10, 10), (4.0, 1.0, 1.0), (2.0, 1.0, 1.0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, ::2], data[0])  # each thick slice repeated: order 0 along the thick axis
    np.testing.assert_array_equal(out[0, 1::2], data[0])
    smooth = resample(data, (4, 20, 20), (4.0, 1.0, 1.0), (4.0, 0.5, 0.5))
    assert data.min() <= smooth.min() and smooth.max() <= data.max()  # clipped to the input's range


def test_segmentation_resampling_keeps_only_input_labels_and_breaks_ties_to_the_nearest_label():
    seg = np.zeros((6, 6, 6), dtype=np.int16)
    seg[:, :, 3:] = 2
    seg[2:4, 2:4, 1:5] = 1
    out = zoom_labels(seg, (12, 12, 12), 1)
    assert set(np.unique(out)) == {0, 1, 2}
    # a factor-2 downsampling puts every sample exactly between two voxels: 0.5/0.5 ties everywhere at the 0|2 border
    half = zoom_labels(np.repeat(np.array([0, 2], dtype=np.int16), 3)[None, None].repeat(2, 0).repeat(2, 1), (1, 1, 3),
                       1)  # fmt: skip
    nearest = zoom_labels(np.repeat(np.array([0, 2], dtype=np.int16), 3)[None, None].repeat(2, 0).repeat(2, 1),
                          (1, 1, 3), 0)  # fmt: skip
    np.testing.assert_array_equal(half, nearest)


def test_plan_preprocessing_round_trips_a_label_to_the_source_geometry(tiny_raw: Path, tmp_path: Path):
    from segbench.data.dataset import load_case

    plan = read_plan(_plans(tmp_path, spacing=(2.0, 1.0, 1.0), transpose_forward=(2, 0, 1)))
    image, label = load_case(load_dataset(tiny_raw).training[0])
    image.array[:, :2] = 0  # a zero border the crop removes (source axis 0)
    planned = preprocess_with_plan(image.array, label.array, image.spacing, plan)
    assert planned.axes == plan_axes(plan.transpose_forward) == (0, 2, 1)
    assert planned.bbox[0] == (2, 16)  # the crop, on the transposed source grid
    onehot = np.stack([planned.seg <= 0, planned.seg == 1]).astype(np.float32) * 8 - 4
    scores = torch.from_numpy(onehot[1:])  # one sigmoid channel
    from segbench.data.preprocess import PreparedCase

    case = PreparedCase("c", Path("i"), None, label.spatial_shape, image.spacing, plan.spacing, (0.0,) * 16,
                        tuple(planned.image.shape[1:]), planned.axes, planned.bbox,
                        {"order": 1, "order_z": 0, "force_separate_z": None})  # fmt: skip
    restored = labels_in_source_geometry(scores, case)
    assert restored.shape == label.spatial_shape
    expected = label.array.copy()
    expected[:2] = 0  # outside the crop: background
    assert (restored == expected).mean() > 0.97  # down to 2 mm and back: only boundary voxels may move


@pytest.mark.slow
def test_run_with_a_hand_written_plan_predicts_in_the_source_geometry(tiny_raw: Path, tmp_path: Path):
    # The plan transposes (its first axis is nibabel's last) and resamples that axis from 1.37 to 2 mm.
    plans = _plans(tmp_path, spacing=(2.0, 1.25, 1.25), median_spacing=(1.37, 1.25, 1.25), transpose_forward=(2, 0, 1),
                   patch_size=(8, 16, 16))  # fmt: skip
    run_dir = tmp_path / "run"
    proc = _run("--data", str(tiny_raw), "--plans", str(plans), "--models", "fcn", "--iterations", "2", "--folds", "2",
                "--num-workers", "0", "--device", "cpu", "--out", str(run_dir), "--quiet", "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["train"]["patch_size"] == [8, 16, 16] and manifest["plans"]["path"] == str(plans)
    assert (run_dir / "plans.json").read_bytes() == plans.read_bytes()
    predictions = sorted((run_dir / "predictions" / "fcn").glob("*.nii.gz"))
    assert [p.name for p in predictions] == [f"t_00{i}.nii.gz" for i in range(1, 5)]
    for prediction in predictions:
        assert nib.load(str(prediction)).shape == (16, 16, 16)  # the source grid, not the plan's (11 x 16 x 16)


def test_a_plan_and_a_target_spacing_are_refused_together():
    from segbench.config import RunConfig

    with pytest.raises(ConfigError, match="--target-spacing and --plans both set the spacing"):
        RunConfig(plans="/data/nnUNetPlans.json", target_spacing=(1.0, 1.0, 1.0))


def test_case_geometry_follows_the_plan_so_estimates_and_patch_warnings_see_the_planned_arrays(tmp_path: Path):
    """A thick-slice CT case as nibabel reads it (x, y, z) = 256 x 256 x 40 at 0.8 x 0.8 x 4 mm; the plan's axes are
    nibabel's reversed, then transposed, at the plan's spacing. Without the plan the geometry (and the oversized-patch
    warning, and the window count of the cost estimate) would compare the plan's patch with the wrong axes."""
    from types import SimpleNamespace

    import nibabel as nib
    import numpy as np

    from segbench.geometry import oversized_patch_warning, read_geometry, window_count

    path = tmp_path / "ct_000_0000.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((256, 256, 40), np.float32), np.diag([0.8, 0.8, 4.0, 1.0])), path)
    case = SimpleNamespace(case_id="ct_000", images=[path])
    plan = SimpleNamespace(transpose_forward=(0, 1, 2), spacing=(4.0, 1.6, 1.6))
    (planned,) = read_geometry([case], plan=plan)
    assert planned.shape == (40, 128, 128) and planned.spacing == (4.0, 1.6, 1.6)
    patch = (32, 128, 128)
    assert oversized_patch_warning([planned], patch, source="--plans p.json: its patch") is None
    assert window_count(planned.shape, patch, 0.5) == 2  # 2 windows along the 40 slices, 1 in plane
    (unplanned,) = read_geometry([case])
    warning = oversized_patch_warning([unplanned], patch, source="--plans p.json: its patch")
    assert warning is not None and warning.startswith("--plans p.json: its patch 32 128 128 is larger than case ct_000")
    transposed = SimpleNamespace(transpose_forward=(2, 0, 1), spacing=(1.6, 4.0, 1.6))
    assert read_geometry([case], plan=transposed)[0].shape == (128, 40, 128)
