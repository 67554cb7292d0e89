"""Property tests (hypothesis) and a cross-check against an independent brute-force implementation.

The brute force finds boundaries with scipy's binary erosion (6-connectivity, outside = background) and
all pairwise boundary distances with ``scipy.spatial.distance.cdist``: a different route to the same
definitions than segbench's sparse neighbour test and KD-tree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage
from scipy.spatial.distance import cdist

from segbench.metrics import compute_case_metrics, surface_distances

VALUE_KEYS = ("dice", "hd", "hd95", "assd", "nsd")
SETTINGS = settings(max_examples=30, deadline=None)

spacings = st.tuples(*[st.floats(0.3, 3.0, allow_nan=False) for _ in range(3)])


@st.composite
def mask_pairs(draw, max_side: int = 10):
    shape = draw(st.tuples(*[st.integers(1, max_side) for _ in range(3)]))
    pred = draw(arrays(bool, shape))
    ref = draw(arrays(bool, shape))
    return pred, ref


def row_of(pred, ref, spacing, tolerance_mm=1.0) -> dict:
    (row,) = compute_case_metrics(pred, ref, spacing, tolerance_mm=tolerance_mm)
    return row


def assert_same_values(a: dict, b: dict, rel: float = 1e-9) -> None:
    for key in VALUE_KEYS:
        if math.isinf(a[key]):
            assert b[key] == a[key], key
        else:
            assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-12), key


@SETTINGS
@given(mask_pairs(), spacings, st.floats(0.0, 4.0))
def test_symmetry(pair, spacing, tolerance):
    pred, ref = pair
    a, b = row_of(pred, ref, spacing, tolerance), row_of(ref, pred, spacing, tolerance)
    assert_same_values(a, b)
    assert (a["pred_empty"], a["ref_empty"], a["miss"]) == (b["ref_empty"], b["pred_empty"], b["miss"])


@SETTINGS
@given(mask_pairs(), spacings, st.tuples(*[st.integers(0, 3) for _ in range(6)]))
def test_translating_or_padding_both_masks_changes_nothing(pair, spacing, pads):
    pred, ref = pair
    width = list(zip(pads[:3], pads[3:], strict=True))
    a = row_of(pred, ref, spacing)
    b = row_of(np.pad(pred, width), np.pad(ref, width), spacing)
    assert_same_values(a, b)


@SETTINGS
@given(mask_pairs(), spacings, st.floats(0.2, 5.0), st.floats(0.0, 3.0))
def test_distances_scale_with_spacing(pair, spacing, factor, tolerance):
    pred, ref = pair
    a = row_of(pred, ref, spacing, tolerance)
    b = row_of(pred, ref, tuple(factor * s for s in spacing), tolerance * factor)
    assert b["dice"] == a["dice"]
    assert b["nsd"] == a["nsd"]
    for key in ("hd", "hd95", "assd"):
        assert b[key] == pytest.approx(factor * a[key], rel=1e-9, abs=1e-12)


# ---- brute force ------------------------------------------------------------------------------------------------


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing, tolerance: float) -> dict:
    structure = ndimage.generate_binary_structure(3, 1)

    def boundary_points(mask):
        inner = ndimage.binary_erosion(mask, structure=structure, border_value=0)
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    p, r = boundary_points(pred), boundary_points(ref)
    pairwise = cdist(p, r)  # (|∂pred|, |∂ref|) in mm
    d_pr, d_rp = pairwise.min(axis=1), pairwise.min(axis=0)
    both = np.concatenate([d_pr, d_rp])
    return {
        "dice": 2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()),
        "hd": max(d_pr.max(), d_rp.max()),
        "hd95": max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
        "assd": both.mean(),
        "nsd": np.count_nonzero(both <= tolerance + 1e-9) / both.size,
        "d_pr": d_pr,
        "d_rp": d_rp,
    }


def random_blobs(rng: np.random.Generator, shape) -> np.ndarray:
    # Smoothed noise gives blobs with holes, islands and border contact: every kind of boundary voxel.
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=rng.uniform(0.5, 2.0))
    return field > np.quantile(field, rng.uniform(0.4, 0.9))


@pytest.mark.parametrize("seed", range(20))
def test_matches_brute_force_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(6, 17, size=3))
    spacing = (0.7, 1.3, 2.1) if seed % 2 else tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
    pred, ref = random_blobs(rng, shape), random_blobs(rng, shape)
    tolerance = float(rng.uniform(0.5, 3.0))
    expected = brute_force(pred, ref, spacing, tolerance)

    d_pr, d_rp = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_pr, expected["d_pr"], rtol=1e-12)  # same C order of boundary voxels
    np.testing.assert_allclose(d_rp, expected["d_rp"], rtol=1e-12)
    row = row_of(pred, ref, spacing, tolerance)
    for key in VALUE_KEYS:
        assert row[key] == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.parametrize("seed", range(5))
def test_label_maps_match_brute_force_per_label(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (12, 14, 10)
    spacing = (0.8, 1.1, 2.5)

    def label_map():
        out = np.zeros(shape, np.uint8)
        for label in (1, 2, 3):
            out[random_blobs(rng, shape)] = label  # later labels overwrite earlier ones: labels touch
        return out

    pred, ref = label_map(), label_map()
    rows = compute_case_metrics(pred, ref, spacing, tolerance_mm=1.5)
    assert [row["label"] for row in rows] == sorted({int(v) for v in np.unique(np.concatenate([pred, ref]))} - {0})
    for row in rows:
        p, r = pred == row["label"], ref == row["label"]
        if not p.any() or not r.any():
            continue
        expected = brute_force(p, r, spacing, 1.5)
        for key in VALUE_KEYS:
            assert row[key] == pytest.approx(expected[key], rel=1e-6), (row["label"], key)
