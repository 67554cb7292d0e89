"""The synthetic Task02-like phantom: MSD layout, determinism, geometry and the race-safe default cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segbench.data.nifti import read_image, read_label
from segbench.data.synth import (
    DEFAULT_SHAPE,
    GENERATOR_VERSION,
    PhantomConfig,
    cached_synthetic_task,
    case_ids,
    default_dataset_path,
    generate_case,
    make_synthetic_task,
)
from segbench.errors import ConfigError, DatasetError

SMALL = (24, 24, 16)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_case_ids_use_real_task02_ids_first_then_continue():
    training, test = case_ids(cases=22, test_cases=11)
    assert training[:3] == ["la_003", "la_004", "la_005"]
    assert training[19] == "la_030"
    assert training[20:] == ["la_031", "la_032"]
    assert test[:2] == ["la_001", "la_002"] and test[10] == "la_033"
    assert len(set(training) | set(test)) == 33


def test_task_folder_is_msd_format(tmp_path):
    out = make_synthetic_task(tmp_path / "task", cases=3, test_cases=2, seed=1, shape=SMALL)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "SyntheticHeart"
    assert meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "left atrium"}
    assert (meta["numTraining"], meta["numTest"]) == (3, 2)
    assert meta["training"][0] == {"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}
    assert meta["test"] == ["./imagesTs/la_001.nii.gz", "./imagesTs/la_002.nii.gz"]
    for entry in meta["training"]:
        image, label = read_image(out / entry["image"]), read_label(out / entry["label"])
        assert image.array.shape == (1, *SMALL)
        assert label.array.dtype == np.uint8 and set(np.unique(label.array)) == {0, 1}
        assert image.spacing == pytest.approx(PhantomConfig().spacing)
        assert nib.load(out / entry["image"]).get_data_dtype() == np.float32
    for path in meta["test"]:
        assert (out / path).is_file()
    assert not any((out / "labelsTr").glob("la_001*"))


def test_same_arguments_give_identical_bytes_and_seed_changes_them(tmp_path):
    a = make_synthetic_task(tmp_path / "a", cases=2, test_cases=1, seed=0, shape=SMALL)
    b = make_synthetic_task(tmp_path / "b", cases=2, test_cases=1, seed=0, shape=SMALL)
    c = make_synthetic_task(tmp_path / "c", cases=2, test_cases=1, seed=1, shape=SMALL)
    assert _digest(a) == _digest(b)
    assert _digest(a)["imagesTr/la_003.nii.gz"] != _digest(c)["imagesTr/la_003.nii.gz"]


def test_adding_cases_keeps_existing_cases(tmp_path):
    few = make_synthetic_task(tmp_path / "few", cases=1, test_cases=0, shape=SMALL)
    more = make_synthetic_task(tmp_path / "more", cases=2, test_cases=0, shape=SMALL)
    assert _digest(few)["labelsTr/la_003.nii.gz"] == _digest(more)["labelsTr/la_003.nii.gz"]


@pytest.mark.parametrize("index", range(4))
def test_default_geometry_is_task02_like(index):
    case = generate_case(np.random.default_rng([0, 0, index]), shape=DEFAULT_SHAPE)
    target = case.label.astype(bool)
    assert case.image.shape == DEFAULT_SHAPE and case.image.dtype == np.float32
    # One connected target of 15–22 voxels across (per in-plane axis), inside the field of view.
    _, components = ndimage.label(target)
    assert components == 1
    coords = np.argwhere(target)
    extent = coords.max(axis=0) - coords.min(axis=0) + 1
    assert 12 <= np.median(extent) <= 40
    assert coords.min() > 0 and (coords.max(axis=0) < np.asarray(DEFAULT_SHAPE) - 1).all()
    # Thin structures: opening with a 3-voxel ball removes a clear share of the target (veins, appendage tip).
    opened = ndimage.binary_opening(target, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    assert (target & ~opened).sum() > 0.03 * target.sum()
    # The target is bright, and yet bright background exists (neighbours of similar intensity).
    inside = np.median(case.image[ndimage.binary_erosion(target, iterations=2)])
    background = case.image[~ndimage.binary_dilation(target, iterations=2)]
    assert np.median(background) < 0.5 * inside
    assert (background > 0.8 * inside).sum() > 0.5 * target.sum()
    # Anisotropic voxels in the affine.
    assert case.affine[2, 2] != case.affine[0, 0]


def test_cases_differ_in_geometry():
    labels = [generate_case(np.random.default_rng([0, 0, i]), shape=SMALL).label for i in range(3)]
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_too_small_shape_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--shape"):
        make_synthetic_task(tmp_path, cases=1, test_cases=0, shape=(4, 24, 24))


def test_default_dataset_path_uses_env_cache_and_reuses_it(tmp_path, monkeypatch):
    # Small arguments through the same code path; the default (30 cases) is exercised by CLI tests.
    first = cached_synthetic_task(tmp_path, cases=2, test_cases=1, seed=0, shape=SMALL)
    assert first.parent == tmp_path and first.name.startswith(f"synthetic-heart-v{GENERATOR_VERSION}-s0")
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert cached_synthetic_task(tmp_path, cases=2, test_cases=1, seed=0, shape=SMALL) == first
    assert (first / "dataset.json").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_default_dataset_path_name_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "env-cache"))
    # Pre-create the folder so the test does not generate 30 full-size cases.
    (tmp_path / "env-cache" / f"synthetic-heart-v{GENERATOR_VERSION}-s0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="incomplete"):
        default_dataset_path()
    make_synthetic_task(tmp_path / "explicit" / f"synthetic-heart-v{GENERATOR_VERSION}-s0", cases=1, test_cases=0,
                        shape=SMALL)  # fmt: skip
    assert default_dataset_path(cache_dir=tmp_path / "explicit").name == f"synthetic-heart-v{GENERATOR_VERSION}-s0"


def _create(root: str) -> str:
    return str(cached_synthetic_task(Path(root), cases=3, test_cases=1, seed=0, shape=SMALL))


def test_two_processes_creating_the_cache_at_once_both_get_a_complete_folder(tmp_path):
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_create, [str(tmp_path)] * 2)
    assert results[0] == results[1]
    folder = Path(results[0])
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3
    assert len(list((folder / "imagesTr").glob("*.nii.gz"))) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
