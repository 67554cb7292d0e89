"""Every case of metric-cases.md, with exact expected values (1e-6 relative), plus the input policy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segbench.metrics import (
    assd,
    compute_case_metrics,
    dice,
    distance_metrics,
    hd,
    hd95,
    image_diagonal_mm,
    metric_keys,
    nsd,
    surface_distances,
)

REL = 1e-6
ISO = (1.0, 1.0, 1.0)
ANISO = (1.25, 1.25, 1.37)
VALUE_KEYS = ("dice", "hd", "hd95", "assd", "nsd")


def box(shape, *slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slices)] = True
    return mask


def cube(shape, lo, hi) -> np.ndarray:
    return box(shape, *(slice(lo, hi),) * 3)


def one(pred, ref, spacing=ISO, tolerance_mm=2.0) -> dict:
    (row,) = compute_case_metrics(pred, ref, spacing, tolerance_mm=tolerance_mm)
    return row


# ---- analytic cases -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [0.0, 0.5, 2.0])
def test_t1_identical_masks(tolerance):
    mask = cube((64,) * 3, 20, 40)
    row = one(mask, mask.copy(), tolerance_mm=tolerance)
    assert (row["dice"], row["hd"], row["hd95"], row["assd"], row["nsd"]) == (1.0, 0.0, 0.0, 0.0, 1.0)
    assert not row["pred_empty"] and not row["ref_empty"] and not row["miss"]
    assert nsd(mask, mask, ISO, tolerance_mm=tolerance) == 1.0


def test_t4_single_voxels_anisotropic():
    pred, ref = np.zeros((128,) * 3, bool), np.zeros((128,) * 3, bool)
    pred[50, 60, 70] = True
    ref[50, 60, 72] = True
    row = one(pred, ref, spacing=(3, 2, 1))
    assert row["hd"] == pytest.approx(2.0, rel=REL)
    assert row["hd95"] == pytest.approx(2.0, rel=REL)
    assert row["assd"] == pytest.approx(2.0, rel=REL)
    assert row["dice"] == 0.0
    assert hd(pred, ref, (3, 2, 1)) == pytest.approx(2.0, rel=REL)
    assert hd95(pred, ref, (3, 2, 1)) == pytest.approx(2.0, rel=REL)
    assert assd(pred, ref, (3, 2, 1)) == pytest.approx(2.0, rel=REL)
    assert dice(pred, ref) == 0.0


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_t5_shifted_cube(axis, k):
    ref = cube((64,) * 3, 20, 40)
    pred = np.roll(ref, k, axis=axis)
    row = one(pred, ref, spacing=ANISO)
    expected = k * ANISO[axis]
    assert row["hd"] == pytest.approx(expected, rel=REL)
    assert row["hd95"] == pytest.approx(expected, rel=REL)
    assert row["dice"] == pytest.approx((20 - k) / 20, rel=REL)


def test_t5_expected_numbers_spelled_out():
    # The table in metric-cases.md: 1.25/2.50/3.75 on axes 0 and 1, 1.37/2.74/4.11 on axis 2.
    ref = cube((64,) * 3, 20, 40)
    got = [[one(np.roll(ref, k, axis=a), ref, spacing=ANISO)["hd"] for k in (1, 2, 3)] for a in (0, 1, 2)]
    np.testing.assert_allclose(got, [[1.25, 2.5, 3.75], [1.25, 2.5, 3.75], [1.37, 2.74, 4.11]], rtol=REL)


def test_o1_spacing_is_in_array_axis_order():
    ref = box((40, 64, 64), slice(10, 30), slice(20, 40), slice(20, 40))
    pred = np.roll(ref, 2, axis=0)
    row = one(pred, ref, spacing=(1.37, 1.25, 1.25))
    assert row["hd"] == pytest.approx(2.74, rel=REL)  # 2.50 would mean the spacing order is wrong


def test_t6_single_stray_voxel():
    ref = cube((64,) * 3, 10, 30)
    pred = ref.copy()
    pred[50, 19, 19] = True
    row = one(pred, ref)
    assert row["hd"] == pytest.approx(21.0, rel=REL)
    assert row["hd95"] == 0.0
    assert row["dice"] == pytest.approx(16000 / 16001, rel=REL)


def test_t7_island_is_not_hidden_by_hd95():
    ref = cube((64,) * 3, 10, 30)
    pred = ref.copy()
    pred[40:46, 17:23, 17:23] = True
    row = one(pred, ref)
    assert row["hd"] == pytest.approx(16.0, rel=REL)
    assert row["hd95"] == pytest.approx(11.05, rel=REL)  # the "95th percentile of the union" gives 0.0
    assert row["dice"] == pytest.approx(16000 / 16216, rel=REL)


def test_t8_larger_cube():
    ref = cube((64,) * 3, 20, 40)
    pred = cube((64,) * 3, 18, 42)
    row = one(pred, ref, tolerance_mm=1.0)
    assert row["hd"] == pytest.approx(2 * math.sqrt(3), rel=REL)
    assert row["hd95"] == pytest.approx(2 * math.sqrt(2), rel=REL)
    assert row["dice"] == pytest.approx(16000 / 21824, rel=REL)
    assert row["nsd"] == 0.0


def test_b1_slabs_at_the_array_border():
    row = one(box((40,) * 3, slice(0, 20)), box((40,) * 3, slice(0, 21)))
    assert row["hd"] == pytest.approx(1.0, rel=REL)
    assert row["hd95"] == pytest.approx(1.0, rel=REL)
    assert row["dice"] == pytest.approx(40 / 41, rel=REL)
    assert row["dice"] == pytest.approx(0.97561, abs=5e-6)


def test_e4_full_mask_minus_last_slice():
    full = np.ones((20,) * 3, bool)
    row = one(full, box((20,) * 3, slice(0, 19)))
    assert row["hd"] == pytest.approx(1.0, rel=REL)
    assert row["hd95"] == pytest.approx(1.0, rel=REL)
    assert row["dice"] == pytest.approx(38 / 39, rel=REL)
    assert row["dice"] == pytest.approx(0.97436, abs=5e-6)


@pytest.mark.parametrize(
    "pred,ref",
    [
        (cube((64,) * 3, 18, 42), cube((64,) * 3, 20, 40)),  # T8
        (np.roll(cube((64,) * 3, 20, 40), 3, axis=2), cube((64,) * 3, 20, 40)),  # T5
        (
            cube((64,) * 3, 10, 30) | box((64,) * 3, slice(40, 46), slice(17, 23), slice(17, 23)),
            cube((64,) * 3, 10, 30),
        ),  # T7
    ],
)
def test_sym_swapping_pred_and_ref_changes_nothing(pred, ref):
    a, b = one(pred, ref, spacing=ANISO), one(ref, pred, spacing=ANISO)
    for key in VALUE_KEYS:
        assert a[key] == pytest.approx(b[key], rel=1e-12)
    assert (a["pred_volume_ml"], a["ref_volume_ml"]) == (b["ref_volume_ml"], b["pred_volume_ml"])


def test_scale_distances_scale_with_spacing():
    ref = cube((48,) * 3, 10, 30)
    pred = cube((48,) * 3, 12, 31)
    pred[40, 40, 40] = True
    base = one(pred, ref, spacing=ANISO, tolerance_mm=1.5)
    c = 2.5
    scaled = one(pred, ref, spacing=tuple(c * s for s in ANISO), tolerance_mm=1.5 * c)
    for key in ("hd", "hd95", "assd"):
        assert scaled[key] == pytest.approx(c * base[key], rel=1e-9)
    assert scaled["dice"] == base["dice"]
    assert scaled["nsd"] == base["nsd"]
    assert scaled["pred_volume_ml"] == pytest.approx(c**3 * base["pred_volume_ml"], rel=1e-9)


def test_trans_translation_and_padding_change_nothing():
    ref = cube((40,) * 3, 5, 20)
    pred = np.roll(cube((40,) * 3, 6, 22), 1, axis=1)
    base = one(pred, ref, spacing=ANISO)
    moved = one(np.roll(pred, (7, 3, 9), axis=(0, 1, 2)), np.roll(ref, (7, 3, 9), axis=(0, 1, 2)), spacing=ANISO)
    padded = one(np.pad(pred, ((3, 0), (0, 5), (2, 2))), np.pad(ref, ((3, 0), (0, 5), (2, 2))), spacing=ANISO)
    for other in (moved, padded):
        for key in VALUE_KEYS:
            assert other[key] == pytest.approx(base[key], rel=1e-12)


def test_far_false_positive_in_the_corner():
    ref = cube((64,) * 3, 20, 40)
    good = np.roll(ref, 1, axis=0)
    far = good.copy()
    far[63, 63, 63] = True
    base, row = one(good, ref, spacing=ANISO), one(far, ref, spacing=ANISO)
    # Nearest reference boundary voxel to the corner is the cube's corner (39, 39, 39).
    expected = math.sqrt((24 * 1.25) ** 2 * 2 + (24 * 1.37) ** 2)
    assert row["hd"] == pytest.approx(expected, rel=REL)
    assert row["hd95"] == pytest.approx(base["hd95"], rel=REL)
    # Runtime is covered by benchmarks/test_bench_metrics.py (no timed assertions in tests).


# ---- empty masks --------------------------------------------------------------------------------------------


def test_e1_prediction_empty():
    ref = cube((16,) * 3, 4, 10)
    row = one(np.zeros_like(ref), ref)
    assert (row["dice"], row["nsd"]) == (0.0, 0.0)
    assert row["hd"] == row["hd95"] == row["assd"] == math.inf
    assert row["pred_empty"] and not row["ref_empty"] and row["miss"]
    assert hd95(np.zeros_like(ref), ref, ISO) == math.inf
    d_pred, d_ref = surface_distances(np.zeros_like(ref), ref, ISO)
    assert d_pred.size == 0 and d_ref.size > 0 and np.isinf(d_ref).all()


def test_e2_reference_empty():
    pred = cube((16,) * 3, 4, 10)
    row = one(pred, np.zeros_like(pred))
    assert (row["dice"], row["nsd"]) == (0.0, 0.0)
    assert row["hd"] == row["hd95"] == row["assd"] == math.inf
    assert not row["pred_empty"] and row["ref_empty"] and row["miss"]
    assert dice(pred, np.zeros_like(pred)) == 0.0


def test_e3_both_empty():
    empty = np.zeros((16,) * 3, bool)
    row = one(empty, empty)
    assert (row["dice"], row["hd"], row["hd95"], row["assd"], row["nsd"]) == (1.0, 0.0, 0.0, 0.0, 1.0)
    assert row["pred_empty"] and row["ref_empty"] and not row["miss"]
    assert (dice(empty, empty), hd(empty, empty, ISO), nsd(empty, empty, ISO, tolerance_mm=1)) == (1.0, 0.0, 1.0)


def test_distance_metrics_policy_on_arrays():
    assert distance_metrics(np.zeros(0), np.zeros(0), tolerance_mm=1) == {"hd": 0, "hd95": 0, "assd": 0, "nsd": 1}
    miss = distance_metrics(np.full(3, np.inf), np.zeros(0), tolerance_mm=1)
    assert miss == {"hd": math.inf, "hd95": math.inf, "assd": math.inf, "nsd": 0.0}
    row = distance_metrics(np.array([0.0, 1.0, 3.0]), np.array([2.0]), tolerance_mm=1.0)
    assert row["hd"] == 3.0 and row["assd"] == 1.5 and row["nsd"] == 0.5
    assert row["hd95"] == pytest.approx(np.quantile([0, 1, 3], 0.95), rel=REL)


# ---- input policy (E5, E6) -----------------------------------------------------------------------------------


def test_e5_float_probabilities_are_rejected():
    prob = np.random.default_rng(0).random((8, 8, 8))
    with pytest.raises(TypeError, match="float64.*threshold"):
        compute_case_metrics(prob, prob > 0.5, ISO)
    with pytest.raises(TypeError, match="threshold"):
        dice(prob > 0.5, prob)


def test_e5_integer_masks_with_other_values_are_rejected_by_mask_functions():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2:5, 2:5, 2:5] = 255
    with pytest.raises(ValueError, match="other than 0 and 1"):
        hd95(mask, mask, ISO)
    # 0/1 integers are plain masks.
    assert dice(mask // 255, (mask // 255).astype(np.int64)) == 1.0


def test_e5_label_maps_are_compared_per_label():
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    ref[10:18, 2:10, 2:10] = 2  # touches label 1: their shared face is boundary of both
    pred = ref.copy()
    pred[16:18, 2:10, 2:10] = 0
    rows = compute_case_metrics(pred, ref, ANISO)
    assert [row["label"] for row in rows] == [1, 2]
    for row in rows:
        expected = one(pred == row["label"], ref == row["label"], spacing=ANISO)
        assert row == expected | {"label": row["label"]}
    assert rows[0]["dice"] == 1.0 and rows[1]["dice"] == pytest.approx(2 * 6 / 14, rel=REL)
    # 0/255 masks: 255 is a label like any other.
    (row,) = compute_case_metrics((pred > 0).astype(np.uint8) * 255, (ref > 0).astype(np.uint8) * 255, ANISO)
    assert row["label"] == 255 and row["dice"] == pytest.approx(2 * (8 * 64 + 6 * 64) / (30 * 64), rel=REL)


def test_labels_argument():
    ref = np.zeros((12, 12, 12), np.int32)
    ref[2:6, 2:6, 2:6] = 3
    rows = compute_case_metrics(ref, ref, ISO, labels=[5, 3])
    assert [row["label"] for row in rows] == [3, 5]
    assert rows[1]["pred_empty"] and rows[1]["ref_empty"] and not rows[1]["miss"] and rows[1]["dice"] == 1.0
    assert compute_case_metrics(np.zeros_like(ref), np.zeros_like(ref), ISO) == []
    (row,) = compute_case_metrics(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), ISO)
    assert row["label"] == 1 and row["pred_empty"]


def test_row_keys_types_volumes_and_diagonal():
    ref = cube((16, 16, 16), 4, 8)
    (row,) = compute_case_metrics(ref, ref, ANISO, tolerance_mm=1.5)
    assert tuple(row) == metric_keys()
    assert row["tolerance_mm"] == 1.5
    assert row["ref_volume_ml"] == pytest.approx(64 * 1.25 * 1.25 * 1.37 / 1000, rel=REL)
    assert row["diagonal_mm"] == pytest.approx(math.sqrt(2 * 20**2 + 21.92**2), rel=REL)
    assert row["diagonal_mm"] == image_diagonal_mm((16, 16, 16), ANISO)
    assert all(type(row[key]) is bool for key in ("pred_empty", "ref_empty", "miss"))
    assert all(type(row[key]) is float for key in VALUE_KEYS)


def test_e6_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        compute_case_metrics(np.zeros((8, 8, 8), bool), np.zeros((8, 8, 9), bool), ISO)
    with pytest.raises(ValueError, match=r"\(8, 8, 8\).*\(8, 8, 9\)"):
        dice(np.zeros((8, 8, 8), bool), np.zeros((8, 8, 9), bool))


def test_e6_spacing_of_wrong_length_or_sign():
    mask = np.zeros((8, 8, 8), bool)
    with pytest.raises(ValueError, match=r"2 values.*\(8, 8, 8\)"):
        hd(mask, mask, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        compute_case_metrics(mask, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        nsd(mask, mask, ISO, tolerance_mm=-1)
