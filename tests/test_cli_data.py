"""`segbench data check` / `segbench data synth` through the real click entry point on tiny real NIfTI folders.

Every bad-input test asserts the exit code and that the output names the offending file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from msd_factory import (
    ball_label,
    noisy_image,
    read_dataset_json,
    write_dataset_json,
    write_msd,
    write_nnunet,
    write_volume,
)

from segbench.cli import main

SHAPE = (16, 16, 16)


def check(root: Path):
    return CliRunner().invoke(main, ["data", "check", str(root)])


def assert_fails_naming(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in output:\n{result.output}"
    assert "Traceback" not in result.output


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Task02_Heart", cases=("la_003", "la_004", "la_005"), test_cases=("la_001",))


def test_good_msd_folder_passes_with_a_summary(msd: Path):
    result = check(msd)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 training, 1 test" in out
    assert "0: MRI" in out and "1: left atrium" in out
    assert "16×16×16" in out and "1.37×1.25×1.25 mm" in out
    assert "left atrium:" in out and " ml" in out
    assert "ok:" in out and "7 files read fully" in out
    assert "warning" not in out


def test_console_script_exit_codes(msd: Path):
    segbench = str(Path(sys.executable).parent / "segbench")  # next to the interpreter, not on PATH
    ok = subprocess.run([segbench, "data", "check", str(msd)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (msd / "labelsTr" / "la_004.nii.gz").unlink()
    bad = subprocess.run([segbench, "data", "check", str(msd)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "labelsTr/la_004.nii.gz" in bad.stdout


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("keep", [-8, -4, 300], ids=["no-trailer", "half-trailer", "half-file"])
def test_truncated_gzip_is_caught(msd: Path, keep: int):
    # Cutting only the 8-byte gzip trailer leaves a file nibabel loads without complaint.
    _truncate(msd / "imagesTr" / "la_004.nii.gz", keep)
    assert_fails_naming(check(msd), "imagesTr/la_004.nii.gz is truncated")


@pytest.mark.parametrize("offset", [-6, 200], ids=["crc-field", "deflate-data"])
def test_corrupted_gzip_is_caught(msd: Path, offset: int):
    path = msd / "labelsTr" / "la_003.nii.gz"
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert_fails_naming(check(msd), "labelsTr/la_003.nii.gz is corrupted")


def test_missing_file_is_named(msd: Path):
    (msd / "imagesTr" / "la_005.nii.gz").unlink()
    assert_fails_naming(check(msd), "imagesTr/la_005.nii.gz is listed in dataset.json but does not exist")


def test_unlisted_file_is_named(msd: Path):
    shutil.copy(msd / "labelsTr" / "la_003.nii.gz", msd / "labelsTr" / "la_099.nii.gz")
    assert_fails_naming(check(msd), "labelsTr/la_099.nii.gz is in labelsTr but not listed")


def test_every_problem_is_listed_not_just_the_first(msd: Path):
    (msd / "imagesTr" / "la_005.nii.gz").unlink()
    _truncate(msd / "labelsTr" / "la_004.nii.gz", -8)
    shutil.copy(msd / "labelsTr" / "la_003.nii.gz", msd / "imagesTr" / "stray.nii.gz")
    result = check(msd)
    assert_fails_naming(result, "3 problem(s)", "la_005.nii.gz", "labelsTr/la_004.nii.gz", "imagesTr/stray.nii.gz")


def test_macos_metadata_files_are_ignored_with_one_warning(msd: Path):
    (msd / "imagesTr" / "._la_003.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (msd / "labelsTr" / "._la_003.nii.gz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (msd / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    result = check(msd)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "3 macOS metadata file(s)" in warnings[0]
    assert "3 training, 1 test" in result.output


def test_invalid_json_is_named(msd: Path):
    (msd / "dataset.json").write_text('{"name": "Task02_Heart", "labels": {"0": "background",}')
    assert_fails_naming(check(msd), "dataset.json is not valid JSON", "line 1")


def test_missing_key_is_named(msd: Path):
    meta = read_dataset_json(msd)
    del meta["labels"]
    write_dataset_json(msd, meta)
    assert_fails_naming(check(msd), "dataset.json has no 'labels' entry")


def test_missing_dataset_folder_is_named(tmp_path: Path):
    assert_fails_naming(check(tmp_path / "Task99_Nothing"), "Task99_Nothing does not exist")


def test_shape_mismatch_is_named(msd: Path):
    write_volume(msd / "labelsTr" / "la_004.nii.gz", ball_label((16, 16, 14)))
    assert_fails_naming(check(msd), "labelsTr/la_004.nii.gz has shape (16, 16, 14)", "(16, 16, 16)")


def test_spacing_mismatch_is_named(msd: Path):
    write_volume(msd / "labelsTr" / "la_004.nii.gz", ball_label(SHAPE), spacing=(1.5, 1.25, 1.25))
    assert_fails_naming(check(msd), "labelsTr/la_004.nii.gz has spacing 1.5×1.25×1.25 mm")


def test_spacing_within_tolerance_passes(msd: Path):
    write_volume(msd / "labelsTr" / "la_004.nii.gz", ball_label(SHAPE), spacing=(1.37 * (1 + 2e-4), 1.25, 1.25))
    result = check(msd)
    assert result.exit_code == 0, result.output


def test_undeclared_label_value_is_named(msd: Path):
    label = ball_label(SHAPE)
    label[0, 0, 0] = 2
    write_volume(msd / "labelsTr" / "la_005.nii.gz", label)
    assert_fails_naming(check(msd), "labelsTr/la_005.nii.gz contains label value(s) [2] not declared")


def test_nan_voxel_is_named(msd: Path):
    image = noisy_image(ball_label(SHAPE))
    image[3, 4, 5] = np.nan
    write_volume(msd / "imagesTs" / "la_001.nii.gz", image)
    assert_fails_naming(check(msd), "imagesTs/la_001.nii.gz contains 1 NaN or infinite voxel(s)")


def test_empty_label_is_only_a_warning(msd: Path):
    write_volume(msd / "labelsTr" / "la_003.nii.gz", np.zeros(SHAPE, np.uint8))
    result = check(msd)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "labelsTr/la_003.nii.gz has no foreground voxels" in result.output


def test_channel_count_mismatch_is_named(msd: Path):
    meta = read_dataset_json(msd)
    meta["modality"] = {"0": "T1", "1": "T2"}
    write_dataset_json(msd, meta)
    result = check(msd)
    assert_fails_naming(result, "imagesTr/la_003.nii.gz has 1 channel(s) but dataset.json modality declares 2")


def test_duplicate_case_id_is_named(msd: Path):
    meta = read_dataset_json(msd)
    meta["test"].append("./imagesTr/la_003.nii.gz")
    write_dataset_json(msd, meta)
    assert_fails_naming(check(msd), "case id 'la_003' 2 times")


def test_float_label_with_integral_values_is_accepted(msd: Path):
    write_volume(msd / "labelsTr" / "la_004.nii.gz", ball_label(SHAPE).astype(np.float32))
    result = check(msd)
    assert result.exit_code == 0, result.output


def test_float_label_with_fractional_values_is_rejected(msd: Path):
    label = ball_label(SHAPE).astype(np.float32)
    label[8, 8, 8] = 0.5
    write_volume(msd / "labelsTr" / "la_004.nii.gz", label)
    assert_fails_naming(check(msd), "labelsTr/la_004.nii.gz contains non-integral label values")


def test_multichannel_msd_passes(tmp_path: Path):
    root = write_msd(tmp_path / "Task01_BrainTumour", cases=("b_1", "b_2"), channels=("FLAIR", "T1w"))
    result = check(root)
    assert result.exit_code == 0, result.output
    assert "0: FLAIR, 1: T1w" in result.output


def test_nnunet_folder_is_read_and_validated(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset002_Heart", channels=("T1", "T2"))
    result = check(root)
    assert result.exit_code == 0, result.output
    assert "(nnunet)" in result.output and "3 training, 1 test" in result.output and "0: T1, 1: T2" in result.output


def test_nnunet_missing_channel_and_orphan_label_are_named(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset002_Heart", channels=("T1", "T2"))
    (root / "imagesTr" / "heart_002_0001.nii.gz").unlink()
    shutil.copy(root / "labelsTr" / "heart_001.nii.gz", root / "labelsTr" / "heart_077.nii.gz")
    assert_fails_naming(
        check(root),
        "imagesTr/heart_002_0001.nii.gz is missing",
        "labelsTr/heart_077.nii.gz has no image heart_077_0000.nii.gz",
    )


@pytest.mark.parametrize("entry", ["../secret/la_003.nii.gz", "/etc/hostname"])
def test_path_escape_is_refused_naming_the_entry(msd: Path, entry: str):
    meta = read_dataset_json(msd)
    meta["training"][1]["label"] = entry
    write_dataset_json(msd, meta)
    assert_fails_naming(check(msd), f"training[1].label '{entry}'")


def test_symlinked_images_folder_works(msd: Path, tmp_path: Path):
    elsewhere = tmp_path / "fast_disk" / "imagesTr"
    elsewhere.parent.mkdir()
    shutil.move(msd / "imagesTr", elsewhere)
    (msd / "imagesTr").symlink_to(elsewhere, target_is_directory=True)
    result = check(msd)
    assert result.exit_code == 0, result.output


def test_synth_writes_a_dataset_that_passes_check(tmp_path: Path):
    pytest.importorskip("segbench.data.synth")
    out = tmp_path / "synthetic"
    args = ["data", "synth", str(out), "--cases", "2", "--test-cases", "1", "--seed", "3", "--shape", "16", "16", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    checked = check(out)
    assert checked.exit_code == 0, checked.output
    assert "2 training, 1 test" in checked.output and "16×16×16" in checked.output


def test_synth_rejects_a_bad_shape(tmp_path: Path):
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "x"), "--shape", "16", "16"])
    assert result.exit_code == 2 and "--shape" in result.output
