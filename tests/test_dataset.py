"""segbench.data.dataset: MSD / nnU-Net v2 parsing, case loading, path safety, fingerprints (tiny real NIfTI)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from msd_factory import ball_label, read_dataset_json, write_dataset_json, write_msd, write_nnunet, write_volume

from segbench.data.dataset import Case, dataset_fingerprint, load_case, load_dataset
from segbench.errors import DatasetError


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    return write_msd(tmp_path / "Task02_Heart", cases=("la_005", "la_003", "la_004"), test_cases=("la_001",))


def test_msd_is_parsed_with_sorted_cases_labels_and_channels(msd: Path):
    spec = load_dataset(msd)
    assert spec.format == "msd"
    assert spec.name == "Task02_Heart"
    assert spec.channels == ("MRI",)
    assert spec.labels == {0: "background", 1: "left atrium"}
    assert spec.foreground_labels == (1,)
    assert spec.file_ending == ".nii.gz"
    assert [c.case_id for c in spec.training] == ["la_003", "la_004", "la_005"]
    assert spec.training[0] == Case("la_003", (msd / "imagesTr" / "la_003.nii.gz",), msd / "labelsTr" / "la_003.nii.gz")
    assert spec.test == (Case("la_001", (msd / "imagesTs" / "la_001.nii.gz",), None),)
    assert spec.ignored_files == ()


def test_load_case_returns_channel_first_float_image_and_integer_label(msd: Path):
    image, label = load_case(load_dataset(msd).training[0])
    assert image.array.shape == (1, 16, 16, 16) and image.array.dtype == np.float32
    assert label is not None and label.array.shape == (16, 16, 16)
    assert np.issubdtype(label.array.dtype, np.integer)
    np.testing.assert_array_equal(label.array, ball_label((16, 16, 16)))
    np.testing.assert_allclose(image.spacing, (1.37, 1.25, 1.25), rtol=1e-6)


def test_test_case_has_no_label(msd: Path):
    image, label = load_case(load_dataset(msd).test[0])
    assert label is None and image.array.shape == (1, 16, 16, 16)


def test_4d_channel_last_msd_image_is_read_channel_first(tmp_path: Path):
    root = write_msd(tmp_path / "Task01", cases=("brats_001",), test_cases=(), channels=("FLAIR", "T1w", "T1gd"))
    # Channel c holds the constant c: a wrong transpose would mix values along an axis.
    channel_last = np.stack([np.full((16, 16, 16), float(c), np.float32) for c in range(3)], axis=-1)
    write_volume(root / "imagesTr" / "brats_001.nii.gz", channel_last)
    spec = load_dataset(root)
    image, _ = load_case(spec.training[0])
    assert spec.channels == ("FLAIR", "T1w", "T1gd")
    assert image.array.shape == (3, 16, 16, 16)
    for c in range(3):
        assert np.all(image.array[c] == c)


def test_nnunet_v2_cases_are_paired_and_channels_stacked(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset002_Heart", cases=("h_2", "h_1"), test_cases=("t_1",), channels=("T1", "T2"))
    (root / "imagesTr" / "._h_1_0000.nii.gz").write_bytes(b"\0\5\26\7")
    spec = load_dataset(root)
    assert spec.format == "nnunet" and spec.name == "Dataset002_Heart"
    assert spec.channels == ("T1", "T2")
    assert spec.labels == {0: "background", 1: "left atrium"}
    assert [c.case_id for c in spec.training] == ["h_1", "h_2"]
    assert spec.training[0].images == (root / "imagesTr" / "h_1_0000.nii.gz", root / "imagesTr" / "h_1_0001.nii.gz")
    assert spec.training[0].label == root / "labelsTr" / "h_1.nii.gz"
    assert [c.case_id for c in spec.test] == ["t_1"] and spec.test[0].label is None
    assert spec.ignored_files == (root / "imagesTr" / "._h_1_0000.nii.gz",)
    image, label = load_case(spec.training[0])
    assert image.array.shape == (2, 16, 16, 16) and label is not None


def test_nnunet_region_labels_are_refused_naming_the_label(tmp_path: Path):
    root = write_nnunet(tmp_path / "Dataset003")
    meta = read_dataset_json(root)
    meta["labels"]["whole"] = [1, 2]
    write_dataset_json(root, meta)
    with pytest.raises(DatasetError, match="label 'whole'.*region-based"):
        load_dataset(root)


def test_apple_double_and_ds_store_are_never_cases(msd: Path):
    (msd / "imagesTr" / "._la_003.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
    (msd / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    spec = load_dataset(msd)
    assert len(spec.training) == 3
    assert set(spec.ignored_files) == {msd / "imagesTr" / "._la_003.nii.gz", msd / ".DS_Store"}


@pytest.mark.parametrize(
    "entry",
    ["../outside/la_003.nii.gz", "./imagesTr/../../outside/la_003.nii.gz", "/etc/passwd", "C:\\data\\la_003.nii.gz"],
)
def test_paths_escaping_the_dataset_folder_are_refused_naming_the_entry(msd: Path, entry: str):
    outside = msd.parent / "outside"
    outside.mkdir()
    shutil.copy(msd / "imagesTr" / "la_003.nii.gz", outside / "la_003.nii.gz")
    meta = read_dataset_json(msd)
    meta["training"][0]["image"] = entry
    write_dataset_json(msd, meta)
    with pytest.raises(DatasetError) as info:
        load_dataset(msd)
    message = str(info.value)
    assert "training[0].image" in message and entry in message
    assert "absolute" in message or "outside" in message


def test_dotdot_that_stays_inside_is_allowed(msd: Path):
    meta = read_dataset_json(msd)
    meta["training"][0]["image"] = "./labelsTr/../imagesTr/la_005.nii.gz"
    write_dataset_json(msd, meta)
    assert load_dataset(msd).training[2].images == (msd / "imagesTr" / "la_005.nii.gz",)


def test_symlinked_images_folder_keeps_working(msd: Path, tmp_path: Path):
    other_disk = tmp_path / "other_disk" / "imagesTr"
    other_disk.parent.mkdir()
    shutil.move(msd / "imagesTr", other_disk)
    (msd / "imagesTr").symlink_to(other_disk, target_is_directory=True)
    spec = load_dataset(msd)
    # Paths keep the name inside the dataset (lexical), even though the files live elsewhere.
    assert spec.training[0].images == (msd / "imagesTr" / "la_003.nii.gz",)
    image, label = load_case(spec.training[0])
    assert image.array.shape == (1, 16, 16, 16) and label is not None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.pop("labels"), "no 'labels' entry"),
        (lambda m: m.pop("training"), "no 'training' entry"),
        (lambda m: m.update(modality={"0": "MRI", "2": "CT"}), "without gaps"),
        (lambda m: m.update(labels={"1": "left atrium"}), "must declare 0"),
        (lambda m: m.update(training={"image": "x"}), "'training' must be a JSON list"),
        (lambda m: m.pop("modality"), "no 'modality' entry"),
    ],
)
def test_malformed_dataset_json_names_the_file_and_the_key(msd: Path, edit, expected: str):
    meta = read_dataset_json(msd)
    edit(meta)
    write_dataset_json(msd, meta)
    with pytest.raises(DatasetError, match=expected) as info:
        load_dataset(msd)
    assert str(msd / "dataset.json") in str(info.value)


def test_invalid_json_and_missing_folder_raise_dataset_error(msd: Path, tmp_path: Path):
    (msd / "dataset.json").write_text('{"name": "Task02_Heart",')
    with pytest.raises(DatasetError, match="dataset.json is not valid JSON"):
        load_dataset(msd)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty/dataset.json does not exist"):
        load_dataset(empty)


def test_duplicate_case_ids_are_refused(msd: Path):
    meta = read_dataset_json(msd)
    meta["training"].append(dict(meta["training"][0]))
    write_dataset_json(msd, meta)
    with pytest.raises(DatasetError, match="case id 'la_005' 2 times"):
        load_dataset(msd)


def test_load_case_names_the_label_when_shapes_differ(msd: Path):
    write_volume(msd / "labelsTr" / "la_003.nii.gz", ball_label((16, 16, 12)))
    with pytest.raises(DatasetError, match="labelsTr/la_003.nii.gz has shape"):
        load_case(load_dataset(msd).training[0])


def test_fingerprint_is_stable_and_changes_with_any_file(msd: Path, tmp_path: Path):
    first = dataset_fingerprint(load_dataset(msd))
    assert len(first) == 64 and first == dataset_fingerprint(load_dataset(msd))
    # Same content elsewhere: same fingerprint (the location is not part of the dataset's identity).
    copy = shutil.copytree(msd, tmp_path / "copy")
    assert dataset_fingerprint(load_dataset(copy)) == first
    # One voxel of one label changes it.
    label = ball_label((16, 16, 16))
    label[0, 0, 0] = 1
    write_volume(msd / "labelsTr" / "la_004.nii.gz", label)
    second = dataset_fingerprint(load_dataset(msd))
    assert second != first
    # dataset.json (e.g. a renamed label) changes it.
    meta = read_dataset_json(msd)
    meta["labels"]["1"] = "LA"
    (msd / "dataset.json").write_text(json.dumps(meta))
    assert dataset_fingerprint(load_dataset(msd)) not in (first, second)


def test_fingerprint_names_a_missing_file(msd: Path):
    spec = load_dataset(msd)
    (msd / "imagesTs" / "la_001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="imagesTs/la_001.nii.gz"):
        dataset_fingerprint(spec)
