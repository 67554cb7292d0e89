"""Speed of segbench's metrics against MONAI's hd95 and medpy's hd95 on a Task02-sized case.

Scenarios (320×320×110 voxels at 1.25×1.25×1.37 mm, a left-atrium-sized irregular blob of ~45 ml; the
prediction is a perturbed, slightly shifted copy of the reference):

* ``clean``: that pair;
* ``far_fp``: the same pair plus one false-positive voxel in the far image corner, which enlarges the union
  bounding box to the whole image (the case that makes crop-then-distance-transform methods slow).

Targets (checked in ``test_metric_speed[segbench-*]``, which runs after the references of its scenario):
segbench's ``compute_case_metrics`` (every metric, one call) takes at most half the median time of MONAI's
``compute_hausdorff_distance(percentile=95)`` alone and is at least 20× faster than medpy's ``hd95``.
MONAI and medpy are optional (``pip install segbench[bench]``); their cases are skipped when absent.

Run::

    pytest benchmarks/test_bench_metrics.py --benchmark-only --benchmark-autosave

Measured on the 2-core development machine (CPU, medians): segbench 33 ms in both scenarios; MONAI hd95
655 ms (clean) / 791 ms (far_fp) → segbench takes 5% / 4% of it; medpy hd95 8.7 s / 7.4 s → 261× / 222×.

The values of each tool go to ``extra_info`` and are checked where the definitions agree: hd (all three),
hd95 (segbench = MONAI: max of directed 95th percentiles), medpy's hd95 = the 95th percentile of the union of
segbench's two directed distance arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from segbench.metrics import compute_case_metrics, surface_distances

# MONAI 1.5+ warns about a deprecated argument inside its own get_mask_edges; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SHAPE = (320, 320, 110)
SPACING = (1.25, 1.25, 1.37)
SCENARIOS = ("clean", "far_fp")
# References first, segbench last: its test compares against the medians measured just before.
TOOLS = ("monai_hd95", "medpy_hd95", "segbench")
MAX_SHARE_OF_MONAI = 0.5
MIN_SPEEDUP_VS_MEDPY = 20.0

_CROP = (96, 96, 72)
_RADII_MM = (25.0, 22.0, 19.0)

_MEDIANS: dict[tuple[str, str], float] = {}


def _blob(noise: np.ndarray, *, shift: tuple[int, int, int]) -> np.ndarray:
    """An irregular ellipsoid (~45 ml) near the image centre, as a bool array of SHAPE.

    ``noise`` (shape ``_CROP``, unit scale) roughens the surface; ``shift`` moves the blob (voxels).
    """
    grid = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(_CROP, SPACING, strict=True)], indexing="ij")
    radius = np.sqrt(sum((g / r) ** 2 for g, r in zip(grid, _RADII_MM, strict=True)))
    full = np.zeros(SHAPE, dtype=bool)
    start = [(n - c) // 2 + d for n, c, d in zip(SHAPE, _CROP, shift, strict=True)]
    full[tuple(slice(s, s + c) for s, c in zip(start, _CROP, strict=True))] = radius + noise < 1.0
    return full


def _smooth_noise(rng: np.random.Generator, *, sigma: float, scale: float) -> np.ndarray:
    # Built in a crop around the object: smoothing the whole 11M-voxel image would only cost time.
    noise = ndimage.gaussian_filter(rng.standard_normal(_CROP), sigma=sigma)
    return scale * noise / noise.std()


def make_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The ``clean`` and ``far_fp`` (pred, ref) pairs, deterministic."""
    rng = np.random.default_rng(0)
    shape_noise = _smooth_noise(rng, sigma=5.0, scale=0.25)
    ref = _blob(shape_noise, shift=(0, 0, 0))
    # The prediction: the same blob with errors of its own (finer noise) and a one-voxel shift.
    pred = _blob(shape_noise + _smooth_noise(rng, sigma=2.5, scale=0.1), shift=(1, 0, 1))
    far = pred.copy()
    far[-1, -1, -1] = True
    return {"clean": (pred, ref), "far_fp": (far, ref)}


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return make_pairs()


def _monai_hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    from monai.metrics import compute_hausdorff_distance

    # MONAI wants one-hot (B, C, ...) tensors; include_background=False scores channel 1 only.
    y_pred = torch.from_numpy(np.stack([~pred, pred])[None])
    y = torch.from_numpy(np.stack([~ref, ref])[None])
    return float(compute_hausdorff_distance(y_pred, y, percentile=95, spacing=list(SPACING)).item())


def _monai_hd(pred: np.ndarray, ref: np.ndarray) -> float:
    from monai.metrics import compute_hausdorff_distance

    y_pred = torch.from_numpy(np.stack([~pred, pred])[None])
    y = torch.from_numpy(np.stack([~ref, ref])[None])
    return float(compute_hausdorff_distance(y_pred, y, spacing=list(SPACING)).item())


def _medpy_hd95(pred: np.ndarray, ref: np.ndarray) -> float:
    from medpy.metric.binary import hd95

    return float(hd95(pred, ref, voxelspacing=SPACING))


def _medpy_hd(pred: np.ndarray, ref: np.ndarray) -> float:
    from medpy.metric.binary import hd

    return float(hd(pred, ref, voxelspacing=SPACING))


def _segbench(pred: np.ndarray, ref: np.ndarray) -> dict:
    return compute_case_metrics(pred, ref, SPACING, tolerance_mm=2.0)[0]


def _median_seconds(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return None
    return float(stats.stats.median)


@pytest.mark.parametrize(("scenario", "tool"), [(s, t) for s in SCENARIOS for t in TOOLS])
def test_metric_speed(benchmark, pairs, scenario: str, tool: str) -> None:
    torch.set_num_threads(1)
    pred, ref = pairs[scenario]
    benchmark.extra_info.update({"scenario": scenario, "tool": tool, "shape": list(SHAPE), "spacing": list(SPACING)})
    benchmark.extra_info["ref_volume_ml"] = float(ref.sum() * np.prod(SPACING) / 1000)

    if tool == "monai_hd95":
        pytest.importorskip("monai")
        value = benchmark.pedantic(_monai_hd95, args=(pred, ref), rounds=5, warmup_rounds=1, iterations=1)
        benchmark.extra_info.update({"hd95": value, "hd": _monai_hd(pred, ref)})
    elif tool == "medpy_hd95":
        pytest.importorskip("medpy")
        value = benchmark.pedantic(_medpy_hd95, args=(pred, ref), rounds=3, warmup_rounds=1, iterations=1)
        benchmark.extra_info.update({"hd95_union": value, "hd": _medpy_hd(pred, ref)})
    else:
        row = benchmark.pedantic(_segbench, args=(pred, ref), rounds=20, warmup_rounds=2, iterations=1)
        d_pred, d_ref = surface_distances(pred, ref, SPACING)
        benchmark.extra_info.update(
            {key: row[key] for key in ("dice", "hd", "hd95", "assd", "nsd")}
            | {"hd95_union": float(np.percentile(np.concatenate([d_pred, d_ref]), 95))}
        )
    median = _median_seconds(benchmark)
    if median is not None:
        _MEDIANS[(scenario, tool)] = median
        benchmark.extra_info["median_s"] = median

    if tool != "segbench":
        return
    _check_agreement(benchmark.extra_info, pred, ref)
    _check_ratios(benchmark.extra_info, scenario)


def _check_agreement(info: dict, pred: np.ndarray, ref: np.ndarray) -> None:
    # Where definitions agree the values must match (1e-6 relative).
    try:
        monai_hd95, monai_hd = _monai_hd95(pred, ref), _monai_hd(pred, ref)
    except ImportError:
        monai_hd95 = monai_hd = None
    if monai_hd95 is not None:
        info.update({"monai_hd95": monai_hd95, "monai_hd": monai_hd})
        assert info["hd95"] == pytest.approx(monai_hd95, rel=1e-6)
        assert info["hd"] == pytest.approx(monai_hd, rel=1e-6)
    try:
        medpy_hd95, medpy_hd = _medpy_hd95(pred, ref), _medpy_hd(pred, ref)
    except ImportError:
        medpy_hd95 = medpy_hd = None
    if medpy_hd95 is not None:
        info.update({"medpy_hd95": medpy_hd95, "medpy_hd": medpy_hd})
        assert info["hd95_union"] == pytest.approx(medpy_hd95, rel=1e-6)
        assert info["hd"] == pytest.approx(medpy_hd, rel=1e-6)


def _check_ratios(info: dict, scenario: str) -> None:
    ours = _MEDIANS.get((scenario, "segbench"))
    if ours is None:
        return
    monai = _MEDIANS.get((scenario, "monai_hd95"))
    medpy = _MEDIANS.get((scenario, "medpy_hd95"))
    if monai is not None:
        info["share_of_monai_hd95_time"] = ours / monai
    if medpy is not None:
        info["speedup_vs_medpy_hd95"] = medpy / ours
    if monai is not None:
        assert ours / monai <= MAX_SHARE_OF_MONAI, f"{scenario}: segbench {ours:.4f}s vs MONAI hd95 {monai:.4f}s"
    if medpy is not None:
        assert medpy / ours >= MIN_SPEEDUP_VS_MEDPY, f"{scenario}: segbench {ours:.4f}s vs medpy hd95 {medpy:.4f}s"
