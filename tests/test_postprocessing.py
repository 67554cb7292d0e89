"""The postprocessing rule decided on the folds (segbench.postprocessing): components, Dice means, both sides of
the rule, the JSON form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segbench.metrics import compute_case_metrics
from segbench.postprocessing import (
    Decision,
    apply_decision,
    decide,
    dice_counts,
    keep_largest_component,
    largest_component_mask,
    mean_dice,
)

SHAPE = (24, 24, 24)


def cube(corner: tuple[int, int, int], size: int, value: int = 1, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    z, y, x = corner
    out[z : z + size, y : y + size, x : x + size] = value
    return out


def test_components_are_26_connected_and_ties_are_all_kept():
    mask = np.zeros((5, 5, 5), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner neighbours: one component under full connectivity
    mask[4, 4, 0] = True
    assert largest_component_mask(mask).sum() == 2 and not largest_component_mask(mask)[4, 4, 0]
    tied = np.zeros((5, 5, 5), bool)
    tied[0, 0, 0] = tied[4, 4, 4] = True
    assert np.array_equal(largest_component_mask(tied), tied)
    assert not largest_component_mask(np.zeros((3, 3, 3), bool)).any()
    with pytest.raises(TypeError, match="boolean"):
        largest_component_mask(np.zeros((3, 3, 3), np.uint8))


def test_keep_largest_component_leaves_other_labels_and_its_input_alone():
    seg = cube((2, 2, 2), 6, 1) + cube((14, 14, 14), 3, 1) + cube((20, 2, 2), 2, 2)
    original = seg.copy()
    out = keep_largest_component(seg, (1,))
    assert np.array_equal(seg, original)
    assert (out == 1).sum() == 216 and (out == 2).sum() == 8
    together = keep_largest_component(seg, (1, 2))  # the 2-cube is its own component: removed too
    assert (together == 2).sum() == 0 and together.dtype == seg.dtype


def test_mean_dice_leaves_out_cases_without_the_label_as_nnunet_does():
    counts = np.array([[[10, 0, 0]], [[0, 0, 0]], [[0, 5, 5]]])  # perfect, both empty, a miss
    assert mean_dice(counts)[0] == pytest.approx(0.5)
    assert math.isnan(mean_dice(np.zeros((2, 1, 3), int))[0])
    assert dice_counts(cube((0, 0, 0), 2), cube((1, 0, 0), 2), (1,)).tolist() == [[4, 4, 4]]


def islands_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A reference cube and a prediction that finds it (one voxel layer short) plus two false-positive islands."""
    ref = cube((4, 4, 4), 8)
    pred = cube((4, 4, 4), 7) | cube((20 - seed % 2, 20, 20), 3) | cube((0, 19, 1 + seed), 3)
    return pred, ref


def test_islands_are_removed_and_hd95_improves():
    cases = [islands_case(seed) for seed in range(4)]
    decision = decide(cases, (1,))
    assert decision.applied == ((1,),) and decision.describe() == "keep the largest foreground component"
    assert len(decision.steps) == 1  # one label: the foreground step is the label step
    assert decision.dice_after[1] > decision.dice_before[1] == decision.steps[0].dice_before[1]
    pred, ref = cases[0]
    before = compute_case_metrics(pred, ref, (1.0, 1.0, 1.0), labels=(1,))[0]
    after = compute_case_metrics(apply_decision(pred, decision), ref, (1.0, 1.0, 1.0), labels=(1,))[0]
    assert after["hd95"] < before["hd95"] and after["dice"] > before["dice"]
    assert np.array_equal(apply_decision(pred, decision), cube((4, 4, 4), 7))
    assert before["hd95"] > 10 > 2 > after["hd95"]


def test_a_truth_with_several_components_is_left_alone():
    ref = cube((2, 2, 2), 6) + cube((14, 14, 14), 5)  # two true components
    cases = [(ref.copy(), ref), (cube((2, 2, 2), 5) + cube((14, 14, 14), 5), ref)]
    decision = decide(cases, (1,))
    assert decision.applied == () and decision.describe() == "none"
    assert not decision.steps[0].accepted and decision.steps[0].dice_after[1] < decision.steps[0].dice_before[1]
    assert decision.dice_after == decision.dice_before
    assert np.array_equal(apply_decision(cases[1][0], decision), cases[1][0])


def test_the_foreground_step_is_refused_when_one_label_falls():
    # Label 2 is a separate, smaller true structure: keeping the largest foreground component deletes it.
    ref = cube((2, 2, 2), 8, 1) + cube((16, 16, 16), 4, 2)
    pred = ref.copy()
    pred[20, 2, 20] = 1  # an island of label 1
    decision = decide([(pred, ref)], (1, 2))
    foreground, label_1, label_2 = decision.steps
    assert not foreground.accepted and foreground.dice_after[1] > foreground.dice_before[1]
    assert foreground.dice_after[2] < foreground.dice_before[2]
    assert label_1.accepted and label_1.labels == (1,) and not label_2.accepted
    assert decision.applied == ((1,),)
    assert np.array_equal(apply_decision(pred, decision), ref)


def test_the_decision_survives_json_with_a_label_without_dice():
    ref = cube((2, 2, 2), 6, 1)
    decision = decide([(ref.copy(), ref)], (1, 2))  # label 2 in no case: no Dice, NaN
    assert math.isnan(decision.dice_before[2]) and math.isnan(decision.foreground_before)
    text = json.dumps(decision.to_json(), allow_nan=False)
    again = Decision.from_json(json.loads(text))
    assert again.applied == decision.applied and again.cases == 1 and math.isnan(again.dice_after[2])
    assert again.to_json() == decision.to_json()


def test_decide_needs_cases_and_labels():
    with pytest.raises(ValueError, match="case"):
        decide([], (1,))
    with pytest.raises(ValueError, match="label"):
        decide([(cube((0, 0, 0), 2), cube((0, 0, 0), 2))], ())
