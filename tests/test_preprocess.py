"""Preprocessing cache: z-score, resampling and its inverse, cache keys, reuse and concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from segbench.data.dataset import Case, load_case, load_dataset
from segbench.data.preprocess import (
    PreparedCase,
    PreprocessConfig,
    load_prepared,
    prepare_case,
    prepare_dataset,
    restore_to_original,
)
from segbench.errors import ConfigError, DatasetError


def _write(path: Path, array: np.ndarray, spacing=(2.0, 1.0, 1.5)) -> Path:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 2.5)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


@pytest.fixture
def two_channel_case(tmp_path) -> Case:
    rng = np.random.default_rng(0)
    label = np.zeros((12, 20, 16), np.uint8)
    label[4:8, 6:14, 5:11] = 1
    t1 = _write(
        tmp_path / "c_0000.nii.gz", (500 + 50 * rng.standard_normal(label.shape) + 300.0 * label).astype(np.float32)
    )
    t2 = _write(tmp_path / "c_0001.nii.gz", (3 + rng.standard_normal(label.shape)).astype(np.float32))
    return Case("c", (t1, t2), _write(tmp_path / "c.nii.gz", label))


def test_prepare_writes_zscored_image_and_exact_label(two_channel_case, tmp_path):
    prepared = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=tmp_path / "cache")
    image, label = load_prepared(prepared)
    source_image, source_label = load_case(two_channel_case)
    assert image.shape == (2, 12, 20, 16) and image.dtype == np.float32
    np.testing.assert_allclose(image.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(image.std(axis=(1, 2, 3)), 1.0, atol=1e-4)
    # The z-score is per channel: each channel is an affine map of its source.
    for c in range(2):
        assert np.corrcoef(image[c].ravel(), source_image.array[c].ravel())[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert label.dtype == np.uint8 and np.array_equal(label, source_label.array)
    assert prepared.shape == prepared.original_shape == (12, 20, 16)
    assert prepared.spacing == prepared.original_spacing == (2.0, 1.0, 1.5)
    np.testing.assert_allclose(prepared.affine_matrix, source_image.affine)
    assert isinstance(image, np.memmap) and not image.flags.writeable


def test_constant_image_becomes_zero_not_nan(tmp_path):
    case = Case("flat", (_write(tmp_path / "flat.nii.gz", np.full((8, 8, 8), 7.0, np.float32)),), None)
    prepared = prepare_case(case, config=PreprocessConfig(), cache_dir=tmp_path / "cache")
    image, label = load_prepared(prepared, mmap=False)
    assert label is None and prepared.label_path is None
    assert np.array_equal(image, np.zeros((1, 8, 8, 8), np.float32))


def test_cache_is_reused_and_invalidated_by_source_or_config_change(two_channel_case, tmp_path):
    cache = tmp_path / "cache"
    first = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=cache)
    stamp = first.image_path.stat().st_mtime_ns
    again = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=cache)
    assert again == first and first.image_path.stat().st_mtime_ns == stamp

    resampled = prepare_case(two_channel_case, config=PreprocessConfig(target_spacing=(2.0, 2.0, 2.0)), cache_dir=cache)
    assert resampled.image_path.parent != first.image_path.parent

    # Rewriting a source file (new content, new mtime) must not serve the stale cache.
    label_path = two_channel_case.label
    new_label = np.zeros((12, 20, 16), np.uint8)
    new_label[1:3, 1:3, 1:3] = 1
    _write(label_path, new_label)
    os.utime(label_path, ns=(stamp + 10**9, stamp + 10**9))
    changed = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=cache)
    assert changed.image_path.parent != first.image_path.parent
    assert np.array_equal(load_prepared(changed)[1], new_label)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_resampling_changes_shape_and_restore_inverts_it(two_channel_case, tmp_path):
    config = PreprocessConfig(target_spacing=(1.0, 2.0, 3.0))
    prepared = prepare_case(two_channel_case, config=config, cache_dir=tmp_path / "cache")
    assert prepared.shape == (24, 10, 8) and prepared.spacing == (1.0, 2.0, 3.0)
    assert prepared.original_shape == (12, 20, 16)
    image, label = load_prepared(prepared)
    assert image.shape == (2, 24, 10, 8) and label.shape == (24, 10, 8)
    assert set(np.unique(label)) == {0, 1}  # nearest neighbour: no new label values
    # The labelled box keeps its physical volume (12 mm × 8 mm × 9 mm) up to a voxel layer.
    assert abs(label.sum() * 6.0 - 4 * 8 * 6 * 3.0) <= 0.35 * 4 * 8 * 6 * 3.0

    # Restoring one-hot scores of the prepared label gives back the original label by argmax.
    onehot = torch.from_numpy(np.stack([label == 0, label == 1]).astype(np.float32))
    restored = restore_to_original(onehot, prepared)
    assert restored.shape == (2, 12, 20, 16) and restored.dtype == torch.float32
    agreement = (restored.argmax(0).numpy() == load_case(two_channel_case)[1].array).mean()
    assert agreement > 0.97


def test_restore_is_identity_without_resampling_and_checks_shape(two_channel_case, tmp_path):
    prepared = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=tmp_path / "cache")
    scores = torch.randn(3, *prepared.shape)
    assert restore_to_original(scores, prepared) is scores
    with pytest.raises(ValueError, match="expected scores"):
        restore_to_original(torch.zeros(3, 4, 4, 4), prepared)


def test_prepare_dataset_selects_cases_and_rejects_unknown_ids(tiny_task, tmp_path):
    spec = load_dataset(tiny_task)
    everything = prepare_dataset(spec, config=PreprocessConfig(), cache_dir=tmp_path / "cache", progress=True)
    assert list(everything) == [c.case_id for c in spec.training]
    some = prepare_dataset(spec, config=PreprocessConfig(), cache_dir=tmp_path / "cache", cases=["la_005", "la_003"])
    assert list(some) == ["la_005", "la_003"] and some["la_003"] == everything["la_003"]
    test_case = spec.test[0]
    assert (
        prepare_dataset(spec, config=PreprocessConfig(), cache_dir=tmp_path / "c2", cases=[test_case.case_id])[
            test_case.case_id
        ].label_path
        is None
    )
    with pytest.raises(DatasetError, match="la_999"):
        prepare_dataset(spec, config=PreprocessConfig(), cache_dir=tmp_path / "cache", cases=["la_999"])


def test_prepared_case_json_round_trip(two_channel_case, tmp_path):
    prepared = prepare_case(two_channel_case, config=PreprocessConfig(), cache_dir=tmp_path / "cache")
    folder = prepared.image_path.parent
    assert PreparedCase.from_json(prepared.to_json(), folder) == prepared
    assert (folder / "case.json").is_file()


def test_missing_source_and_bad_spacing_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        prepare_case(Case("x", (tmp_path / "nope.nii.gz",), None), config=PreprocessConfig(), cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="target spacing"):
        PreprocessConfig(target_spacing=(1.0, 0.0, 1.0))


def _prepare(args: tuple[str, str]) -> str:
    image, cache = args
    return str(
        prepare_case(Case("race", (Path(image),), None), config=PreprocessConfig(), cache_dir=Path(cache)).image_path
    )


def test_two_processes_preparing_the_same_case_agree(tmp_path):
    image = _write(tmp_path / "race.nii.gz", np.random.default_rng(1).random((16, 16, 16), dtype=np.float32))
    with multiprocessing.get_context("fork").Pool(2) as pool:
        paths = pool.map(_prepare, [(str(image), str(tmp_path / "cache"))] * 2)
    assert paths[0] == paths[1]
    assert np.load(paths[0]).shape == (1, 16, 16, 16)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]
