"""segbench.data.validate: the ValidationReport contents, gzip verification and nnU-Net-specific checks."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from msd_factory import (
    ball_label,
    noisy_image,
    read_dataset_json,
    write_dataset_json,
    write_msd,
    write_nnunet,
    write_volume,
)

from segbench.data.validate import ValidationReport, validate_dataset, verify_gzip

SHAPE = (16, 16, 16)
SPACING = (1.37, 1.25, 1.25)


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Task02_Heart", cases=("la_003", "la_004"), test_cases=("la_001",))


def test_good_dataset_summary_has_exact_numbers(msd: Path):
    report = validate_dataset(msd)
    assert isinstance(report, ValidationReport)
    assert report.ok and report.problems == () and report.warnings == ()
    s = report.summary
    assert s is not None
    assert (s["name"], s["format"], s["training_cases"], s["test_cases"]) == ("Task02_Heart", "msd", 2, 1)
    assert s["channels"] == ["MRI"] and s["labels"] == {0: "background", 1: "left atrium"}
    assert s["shape_min"] == s["shape_max"] == [16, 16, 16]
    np.testing.assert_allclose(s["spacing_min"], SPACING, rtol=1e-6)
    expected_ml = ball_label(SHAPE).sum() * np.prod(SPACING) / 1000
    fg = s["foreground_ml"]["left atrium"]
    np.testing.assert_allclose([fg["min"], fg["median"], fg["max"]], [expected_ml] * 3, rtol=1e-5)
    assert s["files_read"] == 5 and s["bytes_read"] > 0 and s["ignored_files"] == 0


def test_summary_ranges_and_per_label_volumes(tmp_path: Path):
    labels = {0: "background", 1: "myocardium", 2: "blood pool"}
    root = write_msd(tmp_path / "T", cases=("a", "b"), test_cases=(), labels=labels)
    label = ball_label(SHAPE)
    label[0, 0, :4] = 2  # 4 voxels of label 2 in case b only
    write_volume(root / "labelsTr" / "b.nii.gz", label)
    big = (20, 16, 12)
    write_volume(root / "imagesTr" / "a.nii.gz", noisy_image(ball_label(big)), spacing=(2.0, 1.25, 1.0))
    write_volume(root / "labelsTr" / "a.nii.gz", ball_label(big), spacing=(2.0, 1.25, 1.0))
    report = validate_dataset(root)
    assert report.ok, report.problems
    s = report.summary
    assert s["shape_min"] == [16, 16, 12] and s["shape_max"] == [20, 16, 16]
    np.testing.assert_allclose(s["spacing_min"], (1.37, 1.25, 1.0), rtol=1e-6)
    np.testing.assert_allclose(s["spacing_max"], (2.0, 1.25, 1.25), rtol=1e-6)
    voxel_b = np.prod(SPACING) / 1000
    np.testing.assert_allclose(s["foreground_ml"]["blood pool"]["max"], 4 * voxel_b, rtol=1e-5)
    assert s["foreground_ml"]["blood pool"]["min"] == 0.0


def test_unreadable_dataset_json_gives_no_summary(msd: Path):
    (msd / "dataset.json").write_text("[1, 2]")
    report = validate_dataset(msd)
    assert not report.ok and report.summary is None
    assert len(report.problems) == 1 and "dataset.json must hold a JSON object" in report.problems[0]


def test_several_bad_entries_are_all_reported(msd: Path):
    meta = read_dataset_json(msd)
    meta["training"][0]["image"] = "../x.nii.gz"
    meta["training"][1] = {"image": "./imagesTr/la_004.nii.gz"}
    write_dataset_json(msd, meta)
    report = validate_dataset(msd)
    assert any("training[0].image '../x.nii.gz'" in p for p in report.problems)
    assert any("training[1] must be an object with 'image' and 'label'" in p for p in report.problems)
    # Both images are then unlisted files in imagesTr; that is reported too, per file.
    assert any("imagesTr/la_003.nii.gz is in imagesTr but not listed" in p for p in report.problems)


def test_count_mismatch_and_stray_test_image_are_warnings(msd: Path):
    meta = read_dataset_json(msd)
    meta["numTraining"] = 20
    write_dataset_json(msd, meta)
    shutil.copy(msd / "imagesTs" / "la_001.nii.gz", msd / "imagesTs" / "la_002.nii.gz")
    report = validate_dataset(msd)
    assert report.ok, report.problems
    assert any("numTraining 20 but 2 cases" in w for w in report.warnings)
    assert any(
        "imagesTs/la_002.nii.gz is in imagesTs but not listed in dataset.json 'test'" in w for w in report.warnings
    )


def test_shifted_label_origin_is_a_warning(msd: Path):
    import nibabel as nib

    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (5.0, 0.0, 0.0)
    nib.save(nib.Nifti1Image(ball_label(SHAPE), affine), str(msd / "labelsTr" / "la_003.nii.gz"))
    report = validate_dataset(msd)
    assert report.ok, report.problems
    assert any("labelsTr/la_003.nii.gz has a different position/orientation" in w for w in report.warnings)


def test_no_training_cases_is_a_problem(tmp_path: Path):
    root = write_msd(tmp_path / "T", cases=(), test_cases=("t",))
    report = validate_dataset(root)
    assert any("has no training cases" in p for p in report.problems)


def test_uncompressed_nifti_dataset_is_supported(tmp_path: Path):
    root = write_msd(tmp_path / "T", cases=("a",), test_cases=())
    (root / "imagesTr" / "a.nii.gz").unlink()
    (root / "labelsTr" / "a.nii.gz").unlink()
    write_volume(root / "imagesTr" / "a.nii", noisy_image(ball_label(SHAPE)))
    write_volume(root / "labelsTr" / "a.nii", ball_label(SHAPE))
    meta = read_dataset_json(root)
    meta["training"] = [{"image": "./imagesTr/a.nii", "label": "./labelsTr/a.nii"}]
    write_dataset_json(root, meta)
    report = validate_dataset(root)
    assert report.ok, report.problems


def test_nnunet_channel_file_problems(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset004", cases=("c1", "c2", "c3"), test_cases=(), channels=("T1", "T2"))
    # c1: a 4D file where a 3D channel file is expected.
    write_volume(root / "imagesTr" / "c1_0000.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    # c2: channel files of different shapes.
    write_volume(root / "imagesTr" / "c2_0001.nii.gz", np.zeros((16, 16, 8), np.float32))
    # c3: a third channel file that channel_names does not declare.
    shutil.copy(root / "imagesTr" / "c3_0000.nii.gz", root / "imagesTr" / "c3_0002.nii.gz")
    report = validate_dataset(root)
    problems = "\n".join(report.problems)
    assert "imagesTr/c1_0000.nii.gz holds 2 channels" in problems
    assert "imagesTr/c2_0001.nii.gz has shape (16, 16, 8) but c2_0000.nii.gz has (16, 16, 16)" in problems
    assert "imagesTr/c3_0002.nii.gz is not a channel file" in problems
    assert len(report.problems) == 3


def test_progress_flag_does_not_change_the_report(msd: Path):
    assert validate_dataset(msd, progress=True) == validate_dataset(msd)


def test_verify_gzip(tmp_path: Path):
    payload = bytes(range(256)) * 4096
    good = tmp_path / "good.nii.gz"
    good.write_bytes(gzip.compress(payload))
    assert verify_gzip(good) is None
    # Several gzip members back to back are one valid stream (what `cat a.gz b.gz` gives).
    multi = tmp_path / "multi.nii.gz"
    multi.write_bytes(gzip.compress(payload[:1000]) + gzip.compress(payload[1000:]))
    assert verify_gzip(multi) is None
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:-1])
    assert "cut.nii.gz is truncated" in verify_gzip(cut)
    not_gzip = tmp_path / "plain.nii.gz"
    not_gzip.write_bytes(b"this is not gzip data at all")
    assert "plain.nii.gz is corrupted" in verify_gzip(not_gzip)
    uncompressed = tmp_path / "raw.nii"
    uncompressed.write_bytes(b"anything")
    assert verify_gzip(uncompressed) is None
