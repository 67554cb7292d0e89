"""Parity of segbench's postprocessing decision with nnunetv2 2.8.1's ``determine_postprocessing``.

The reference runs in its own interpreter (tests/nnunet_ref.py) on the same prediction and reference folders; the
accepted steps and the mean Dice per label and over the foreground, before and after, must equal segbench's. Skips
without the reference interpreter.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nnunet_ref import run_nnunet_json
from report_fixtures import add_island, make_run_dir, write_job_results

from segbench import run_postprocessing, rundir
from segbench.data.nifti import read_label
from segbench.postprocessing import Decision, decide

pytestmark = pytest.mark.nnunet

REFERENCE = """
import json, sys
from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

predictions, references, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
dataset = {"labels": {"background": 0, **{f"label_{v}": v for v in labels}}, "file_ending": ".nii.gz"}
fns, kwargs = determine_postprocessing(predictions, references, {"image_reader_writer": "NibabelIO"}, dataset,
                                       num_processes=1, keep_postprocessed_files=False)
summary = json.load(open(predictions + "/postprocessing.json"))
steps = []
for kw in kwargs:
    value = kw["labels_or_regions"]
    steps.append([int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)])
print(json.dumps({"applied": steps, "functions": [f.__name__ for f in fns], "summary": summary}))
"""


def nnunet_decision(predictions: Path, references: Path, labels: tuple[int, ...], tmp_path: Path) -> dict:
    """nnunetv2's decision on a copy of ``predictions`` (it writes into the folder it decides on)."""
    copy = tmp_path / f"nnunet_{predictions.name}"
    shutil.copytree(predictions, copy)
    return run_nnunet_json(REFERENCE, str(copy), str(references), json.dumps(list(labels)))


def assert_same(ours: Decision, theirs: dict) -> None:
    assert [list(labels) for labels in ours.applied] == theirs["applied"]
    assert set(theirs["functions"]) <= {"remove_all_but_largest_component_from_segmentation"}
    summary = theirs["summary"]
    for side, dice in (("input_folder", ours.dice_before), ("postprocessed", ours.dice_after)):
        for label in ours.labels:
            expected = summary[side]["mean"][str(label)]["Dice"]
            assert _same(dice[label], expected), (side, label, dice[label], expected)
        foreground = ours.foreground_before if side == "input_folder" else ours.foreground_after
        assert _same(foreground, summary[side]["foreground_mean"]["Dice"]), side


def _same(ours: float, theirs: float | None) -> bool:
    if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        return math.isnan(ours)
    return ours == pytest.approx(theirs, rel=1e-12, abs=1e-12)


def test_a_runs_decisions_equal_nnunets(tmp_path: Path):
    run = make_run_dir(tmp_path)
    for case in ("la_003", "la_004", "la_008"):
        add_island(next((run / "jobs" / "unet").glob(f"fold_*/predictions/{case}.nii.gz")))
    write_job_results(run)
    decisions = run_postprocessing.postprocess_run(run)
    assert decisions["unet"].applied == ((1,),) and decisions["fcn"].applied == ()
    for model in ("unet", "fcn"):
        stored = Decision.from_json(json.loads(rundir.postprocessing_path(run).read_text())["models"][model])
        theirs = nnunet_decision(rundir.oof_predictions_dir(run, model), tmp_path / "data" / "labelsTr", (1,), tmp_path)
        assert_same(stored, theirs)


def _blob(shape, rng, *, central: bool = False) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    middle = np.array(shape) / 2
    centre = rng.uniform(middle - 3, middle + 3) if central else rng.uniform(4, np.array(shape) - 4)
    radius = rng.uniform(2.0, 4.5)
    return sum((grid[i] - centre[i]) ** 2 for i in range(3)) <= radius**2


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([1.2, 1.0, 1.5, 1.0])), str(path))


def three_label_folders(root: Path, seed: int, *, touching: bool = False) -> tuple[Path, Path]:
    """Predictions and references of 8 cases with labels 1–3: true structures of several components (``touching``:
    every label near the centre, one foreground component), some cases without label 3 at all, predictions with
    missed parts and islands of every label."""
    rng = np.random.default_rng(seed)
    shape = (28, 24, 20)
    for index in range(8):
        ref = np.zeros(shape, np.uint8)
        for label in (1, 2, 3):
            if label == 3 and index % 3 == 0:
                continue  # label 3 in neither mask of this case: no Dice, left out of its mean
            for _ in range(1 + (label == 2 and index % 2)):  # label 2 sometimes has two true components
                ref[_blob(shape, rng, central=touching)] = label
        pred = ref.copy()
        pred[_blob(shape, rng) & (rng.random(shape) < 0.5)] = 0  # missed voxels
        for _ in range(rng.integers(0, 4)):
            corner = rng.integers(0, np.array(shape) - 3)
            label = 3 if index % 3 == 0 else int(rng.integers(1, 4))
            pred[tuple(slice(c, c + int(rng.integers(1, 3))) for c in corner)] = label  # an island
        _write(root / "pred" / f"case_{index:02d}.nii.gz", pred)
        _write(root / "ref" / f"case_{index:02d}.nii.gz", ref)
    return root / "pred", root / "ref"


# Both sides of every step: apart, the foreground step (it would delete true structures) and label 2's (two true
# components) are rejected; touching, the foreground step is accepted and the label steps run on its output.
@pytest.mark.parametrize(
    ("seed", "touching", "applied"),
    [(0, False, ((1,), (3,))), (3, False, ((1,),)), (0, True, ((1, 2, 3), (1,)))],
)
def test_multi_label_decisions_equal_nnunets(tmp_path: Path, seed: int, touching: bool, applied):
    predictions, references = three_label_folders(tmp_path / "data", seed, touching=touching)
    cases = [(read_label(p).array, read_label(references / p.name).array)
             for p in sorted(predictions.glob("*.nii.gz"))]  # fmt: skip
    ours = decide(cases, (1, 2, 3))
    assert len(ours.steps) == 4 and ours.applied == applied
    assert_same(ours, nnunet_decision(predictions, references, (1, 2, 3), tmp_path))
