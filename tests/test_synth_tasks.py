"""The embedded synthetic tasks (heart, ct_lesion, thin): determinism, geometry and labels as docs/tasks.md states
them, the cache key, `segbench data synth --task` and `segbench run --data synth:NAME`."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage

from segbench.cli import data as cli_data
from segbench.cli.group import main
from segbench.data.nifti import read_image, read_label
from segbench.data.synth import cached_synthetic_task, default_dataset_path, make_synthetic_task, resolve_data
from segbench.data.synth_tasks import TASKS, CTLesionConfig, ThinConfig, get_task, task_of
from segbench.errors import ConfigError

SMALL = {"heart": (24, 24, 16), "ct_lesion": (32, 32, 12), "thin": (24, 24, 16)}


def _digest(folder: Path) -> str:
    """One hash of every file's name and content, gzip members decompressed (zlib builds compress differently)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(gzip.decompress(data) if path.name.endswith(".gz") else data)
    return digest.hexdigest()


def _case(task: str, index: int, *, seed: int = 0, shape=None):
    spec = get_task(task)
    rng = np.random.default_rng([seed, 0, index])
    return spec.generate(rng, shape=shape or spec.default_shape, index=index, config=spec.config_type())


def test_the_heart_task_is_todays_default_byte_for_byte(tmp_path: Path):
    # Generated before the tasks existed (generator v1, main at 3f924e1): the default dataset must not change.
    out = make_synthetic_task(tmp_path / "heart", cases=2, test_cases=1, seed=0, shape=(24, 24, 16))
    assert _digest(out) == "b3557bee60cc91e83073ae88349d2d0b9e41901a7813fee7a3d44ab668c530ce"
    same = make_synthetic_task(tmp_path / "named", task="heart", cases=2, test_cases=1, seed=0, shape=(24, 24, 16))
    assert _digest(same) == _digest(out)


@pytest.mark.parametrize("task", ["ct_lesion", "thin"])
def test_same_seed_same_bytes_other_seed_or_task_differs(tmp_path: Path, task: str):
    small = {"cases": 2, "test_cases": 1, "shape": SMALL[task]}
    first = _digest(make_synthetic_task(tmp_path / "a", task=task, seed=4, **small))
    assert _digest(make_synthetic_task(tmp_path / "b", task=task, seed=4, **small)) == first
    assert _digest(make_synthetic_task(tmp_path / "c", task=task, seed=5, **small)) != first
    other = "thin" if task == "ct_lesion" else "ct_lesion"
    image = _case(task, 0, shape=(24, 24, 16)).image
    assert not np.array_equal(image, _case(other, 0, shape=(24, 24, 16)).image.astype(image.dtype))


@pytest.mark.parametrize("task", list(TASKS))
def test_dataset_json_shapes_spacing_and_labels_as_documented(tmp_path: Path, task: str):
    spec = get_task(task)
    out = make_synthetic_task(tmp_path / task, task=task, cases=2, test_cases=1, seed=0, test_labels=True)
    meta = json.loads((out / "dataset.json").read_text())
    names = {"heart": "SyntheticHeart", "ct_lesion": "SyntheticCTLesion", "thin": "SyntheticThin"}
    assert meta["name"] == names[task]
    labels = {
        "heart": {"0": "background", "1": "left atrium"},
        "ct_lesion": {"0": "background", "1": "organ", "2": "lesion"},
        "thin": {"0": "background", "1": "vessel"},
    }
    assert meta["labels"] == labels[task]
    assert meta["modality"] == {"0": "CT" if task == "ct_lesion" else "MRI"}
    shapes = {"heart": (48, 48, 32), "ct_lesion": (56, 56, 24), "thin": (48, 48, 32)}
    spacings = {"heart": (3.125, 3.125, 3.4), "ct_lesion": (0.8, 0.8, 4.0), "thin": (2.0, 2.0, 2.0)}
    assert spec.default_shape == shapes[task] and spec.config_type().spacing == spacings[task]
    assert (meta["numTraining"], meta["numTest"]) == (2, 1)
    for entry in meta["training"]:
        image, label = read_image(out / entry["image"]), read_label(out / entry["label"])
        assert image.array.shape == (1, *shapes[task])
        np.testing.assert_allclose(image.spacing, spacings[task])
        assert set(np.unique(label.array)) <= {int(v) for v in labels[task]}
    assert len(list((out / "labelsTs").glob("*.nii.gz"))) == 1


def test_ct_lesion_is_anisotropic_ct_with_lesions_inside_the_organ_and_three_of_ten_without():
    cfg = CTLesionConfig()
    assert max(cfg.spacing) / min(cfg.spacing) > 3  # nnU-Net's planner calls > 3 anisotropic
    with_lesion = []
    for index in range(10):
        case = _case("ct_lesion", index)
        assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
        organ, lesion = case.label == 1, case.label == 2
        assert organ.sum() > 2000
        assert -150 < case.image[case.label == 0].mean() < 100  # fat, muscle, bone, gas: HU of mixed tissue
        assert 80 < case.image[organ].mean() < 200  # contrast-enhanced parenchyma, in HU
        with_lesion.append(bool(lesion.any()))
        if lesion.any():
            assert lesion.sum() < 0.25 * (organ.sum() + lesion.sum())  # small
            assert case.image[lesion].mean() < case.image[organ].mean() - 20  # hypodense
            grown = ndimage.binary_dilation(lesion)  # surrounded by organ, never touching the background
            assert not (grown & (case.label == 0)).any()
            assert len(np.flatnonzero(lesion.any(axis=(0, 1)))) >= 2  # on at least two slices
    assert with_lesion == [index % 10 not in (2, 5, 8) for index in range(10)]


def test_thin_structures_are_thin_connected_tubes_among_bright_blobs():
    assert ThinConfig().spacing == (2.0, 2.0, 2.0)
    for index in range(6):
        case = _case("thin", index)
        vessels = case.label.astype(bool)
        assert 100 < vessels.sum() < 0.02 * vessels.size
        # The largest inscribed sphere: no voxel lies more than 2 voxels from the background.
        assert ndimage.distance_transform_edt(vessels).max() <= 2.0
        # Thin: most vessel voxels are boundary voxels (a 6-neighbour in the background).
        inner = ndimage.binary_erosion(vessels)
        assert inner.sum() < 0.2 * vessels.sum()
        # Trees, not scattered voxels: a few 26-connected pieces (a tree may leave the volume and come back).
        _, components = ndimage.label(vessels, structure=np.ones((3, 3, 3)))
        assert components <= 6
        # Bright non-vessel voxels exist (blobs), so intensity alone does not find the vessels.
        bright = case.image > np.percentile(case.image[vessels], 50)
        assert (bright & ~ndimage.binary_dilation(vessels, iterations=2)).sum() > 20


def test_cache_key_includes_the_task_and_the_heart_name_is_unchanged(tmp_path: Path):
    for task in TASKS:  # a complete folder is reused as it is: the names are all that is checked here
        spec = get_task(task)
        folder = tmp_path / f"synthetic-{task}-v{spec.version}-s0"
        folder.mkdir()
        (folder / "dataset.json").write_text("{}")
        assert default_dataset_path(task=task, cache_dir=tmp_path) == folder
    assert default_dataset_path(cache_dir=tmp_path).name == "synthetic-heart-v1-s0"
    small = cached_synthetic_task(tmp_path, task="thin", cases=2, test_cases=1, seed=3, shape=SMALL["thin"])
    assert small.name == "synthetic-thin-v1-s3-n2-t1-24x24x16"
    assert json.loads((small / "dataset.json").read_text())["name"] == "SyntheticThin"


def test_data_names_a_task_or_a_folder(tmp_path: Path):
    assert task_of(None) == "heart" and task_of("synth:ct_lesion") == "ct_lesion"
    assert task_of(str(tmp_path)) is None
    assert resolve_data(str(tmp_path)) == tmp_path
    with pytest.raises(ConfigError, match="synth:heart, synth:ct_lesion, synth:thin"):
        task_of("synth:liver")
    with pytest.raises(ConfigError, match="heart, ct_lesion, thin"):
        get_task("liver")
    with pytest.raises(ConfigError, match="PhantomConfig"):
        make_synthetic_task(tmp_path / "x", task="heart", config=ThinConfig())


def test_cli_task_option_help_and_constants(tmp_path: Path):
    assert {name: shape for name, (shape, _) in cli_data.SYNTH_TASKS.items()} == {
        name: spec.default_shape for name, spec in TASKS.items()
    }
    helped = CliRunner().invoke(main, ["data", "synth", "--help"])
    assert all(name in helped.output for name in TASKS) and "56 56 24" in helped.output
    out = tmp_path / "ct"
    args = ["data", "synth", str(out), "--task", "ct_lesion", "--cases", "2", "--test-cases", "1",
            "--shape", "32", "32", "12"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "task ct_lesion" in result.output
    assert json.loads((out / "dataset.json").read_text())["name"] == "SyntheticCTLesion"
    assert read_image(out / "imagesTr" / "ct_001.nii.gz").array.shape == (1, 32, 32, 12)
    refused = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "y"), "--task", "liver"])
    assert refused.exit_code == 2 and "ct_lesion" in refused.output and not (tmp_path / "y").exists()


def test_run_with_an_unknown_task_fails_in_one_sentence_and_leaves_nothing(tmp_path: Path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "run", "--data", "synth:liver", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=120, env={**_env(tmp_path)},
    )  # fmt: skip
    assert proc.returncode != 0
    assert "synth:heart, synth:ct_lesion, synth:thin" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list((tmp_path / "cache").glob("synthetic-*"))


def _env(tmp_path: Path) -> dict[str, str]:
    import os

    return {**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_per_label_section_counts_empty_references_and_their_false_positives():
    import pandas as pd

    from segbench.metrics import compute_case_metrics
    from segbench.report.per_label import per_label_section
    from segbench.report.render import Report, render_markdown

    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    with_lesion, without = ref.copy(), ref.copy()
    with_lesion[3:5, 3:5, 3:5] = 2
    stray = ref.copy()
    stray[3, 3, 3] = 2  # a predicted lesion voxel where the reference has none
    rows = []
    for case_id, (pred, truth) in {"a": (with_lesion, with_lesion), "b": (ref, without), "c": (stray, without)}.items():
        for row in compute_case_metrics(pred, truth, (1.0, 1.0, 1.0), labels=[1, 2], tolerance_mm=1.0):
            rows.append({"model": "fcn", "fold": 0, "repeat": 0, "case_id": case_id,
                         "label_name": {1: "organ", 2: "lesion"}[row["label"]], **row})  # fmt: skip
    section = per_label_section(pd.DataFrame(rows))
    text = render_markdown(Report("r", (section,)))
    assert "## Per label" in text
    lesion_row = next(line for line in text.splitlines() if "| 2 lesion |" in line)
    # Case a: Dice 1; case b: both empty, Dice 1; case c: a miss, Dice 0. Two empty references, one predicted.
    assert "| 3 | 0.667 / 1.000 |" in lesion_row and "| 1 | 2 (1 with a prediction) |" in lesion_row
    assert per_label_section(pd.DataFrame(rows).query("label == 1")) is None  # one label: the leaderboard says it


@pytest.mark.slow
def test_a_ct_lesion_run_scores_organ_and_lesion_also_where_the_lesion_is_absent(tmp_path: Path):
    import pandas as pd

    run_dir = tmp_path / "run"
    tiny = ["--models", "fcn", "--folds", "2", "--iterations", "2", "--batch-size", "2", "--num-workers", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "segbench", "run", "--data", "synth:ct_lesion", *tiny, "--out", str(run_dir), "-q"],
        capture_output=True, text=True, timeout=600, env=_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["data"] == "synth:ct_lesion"
    assert manifest["dataset"]["task"] == "ct_lesion" and manifest["dataset"]["name"] == "SyntheticCTLesion"
    assert manifest["dataset"]["labels"] == {"1": "organ", "2": "lesion"}
    assert Path(manifest["dataset"]["path"]).name == "synthetic-ct_lesion-v1-s0"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert sorted(metrics["label"].unique()) == [1, 2] and len(metrics) == 2 * 20
    lesion = metrics[metrics["label"] == 2].set_index("case_id")
    absent = sorted(lesion.index[lesion["ref_empty"]])
    assert absent == ["ct_003", "ct_006", "ct_009", "ct_013", "ct_016", "ct_019"]  # indices 2, 5, 8 of every 10
    for _, row in lesion.loc[absent].iterrows():  # the metric policy: nothing predicted is perfect, anything a miss
        assert (row["dice"], row["hd95"]) == ((1.0, 0.0) if row["pred_empty"] else (0.0, np.inf))
        assert row["miss"] == (not row["pred_empty"])
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Per label" in report and "| 1 organ |" in report and "| 2 lesion |" in report
    assert "embedded synthetic task ct_lesion" in report
