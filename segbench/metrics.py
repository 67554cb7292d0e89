"""Segmentation metrics: Dice, Hausdorff (hd, hd95), ASSD, NSD and volumes, with one empty-mask policy.

All functions are pure functions of arrays plus voxel spacing. Conventions (pinned by ``tests/test_metrics.py``
and the cases in ``metric-cases.md``):

* **Units.** Spacing is in millimetres, in array-axis order (the order :func:`segbench.data.nifti.read_label`
  returns). Distances are in mm, volumes in millilitres (1 ml = 1000 mm³).
* **Surface.** The surface of a mask is its set of *boundary voxels*: foreground voxels with at least one
  6-connected (face) neighbour in the background. Outside the array counts as background, so an object
  touching the image border has a surface there. Distances are measured between voxel centres.
* **Directed distances.** ``surface_distances(pred, ref)`` gives, for every boundary voxel of ``pred``, the
  distance to the nearest boundary voxel of ``ref``, and the same the other way. Every distance metric is
  computed from these two arrays, so one call (:func:`compute_case_metrics`) yields all of them.
* ``hd`` = max of the two directed maxima (symmetric Hausdorff distance).
* ``hd95`` = max of the two *directed* 95th percentiles, each with linear interpolation (numpy's default
  ``quantile`` method). This is the definition of MONAI (``compute_hausdorff_distance(percentile=95)``) and of
  Metrics Reloaded. We use it because it is symmetric and treats both error types alike: a false-positive
  island and a missed region of the same size move it the same way. Other tools differ: medpy's ``hd95`` takes
  the 95th percentile of the *union* of both distance sets, so a small island far away (a large share of one
  direction, a tiny share of the union) can vanish from it; DeepMind's surface-distance weights each surface
  element by its area and uses a nearest-rank percentile. Values from those tools are therefore not directly
  comparable with segbench's.
* ``assd`` = mean of all distances of both directions together (average symmetric surface distance).
* ``nsd`` = normalised surface Dice at tolerance τ mm: the share of boundary voxels of both masks that lie
  within τ of the other mask's boundary (``d <= τ``, with a relative slack of 1e-9 so that lattice distances
  equal to τ are not lost to floating-point rounding). Boundary voxels are counted, not weighted by area.
* ``dice`` = 2|A∩B| / (|A| + |B|).

**Empty masks.** Both empty: dice 1, hd/hd95/assd 0, nsd 1 (both ``*_empty`` flags set). Exactly one empty:
dice 0, nsd 0, hd/hd95/assd ``+inf`` and ``miss = True``. Averages must never drop a miss silently: the
report counts misses and substitutes the stated penalty ``diagonal_mm`` (the image diagonal in mm) for
infinite distances in means.

**Catalogue.** Every metric is one :class:`Metric` entry (name = column, unit, direction, miss penalty, leaderboard
statistics, one-line definition, and ``compute(case: CaseData) -> float``). :func:`compute_case_metrics`, the tidy
tables, ``segbench evaluate``, the leaderboard, the statistics, the box plots and the report's definitions all
iterate over :func:`metric_catalogue`; :func:`register_metric` adds a metric to all of them at once. Aggregates of
misses use one rule, :func:`penalise` then :func:`summarise`, so every penalised mean and median agrees.

**Inputs.** Masks are boolean arrays; integer arrays holding only 0 and 1 are accepted as masks. Label maps
(any integer dtype) are compared per declared label value by :func:`compute_case_metrics`. Float arrays
(e.g. probabilities) and other dtypes raise ``TypeError`` (threshold them first); integer arrays with other
values passed where a mask is expected raise ``ValueError``. A shape mismatch or a spacing of the wrong
length raises ``ValueError`` naming both shapes.

**Speed.** Boundaries are found from the foreground voxel indices alone (a constant amount of work per
foreground voxel, no morphology over a bounding box), and nearest-boundary distances come from a KD-tree
(:class:`scipy.spatial.cKDTree`) on boundary coordinates scaled by the spacing. The cost therefore grows with
the number of boundary voxels, not with the bounding box: a stray false-positive voxel in a far corner adds
one point, where distance-transform implementations would have to process the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = [
    "nsd_tolerance_warning",
    "PRIMARY_METRIC",
    "CaseData",
    "Metric",
    "Summary",
    "assd",
    "both_empty_metrics",
    "compute_case_metrics",
    "dice",
    "distance_metrics",
    "get_metric",
    "hd",
    "hd95",
    "image_diagonal_mm",
    "metric_catalogue",
    "metric_keys",
    "metric_names",
    "nsd",
    "penalise",
    "register_metric",
    "summarise",
    "surface_distances",
    "unregister_metric",
]

# Relative slack for the NSD tolerance test: distances on the voxel lattice equal to tau (e.g. 2 * 1.37 mm)
# come out of sqrt() a few ulps above or below tau; without slack they would flip with rounding.
_NSD_RELATIVE_SLACK = 1e-9


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _check_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    for name, arr in (("pred", pred), ("ref", ref)):
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(
                f"{name} has dtype {arr.dtype}; metrics need boolean masks or integer label maps "
                "(threshold probabilities first, e.g. prob > 0.5)"
            )
        if arr.ndim == 0:
            raise ValueError(f"{name} is a scalar; metrics need arrays with at least one axis")
    if pred.shape != ref.shape:
        raise ValueError(f"pred shape {pred.shape} differs from ref shape {ref.shape}; masks must be the same shape")
    return pred, ref


def _check_spacing(spacing: Sequence[float], shape: tuple[int, ...]) -> np.ndarray:
    values = np.asarray(spacing, dtype=float).reshape(-1)
    if values.size != len(shape):
        raise ValueError(
            f"spacing {tuple(values.tolist())} has {values.size} values but the masks have shape {shape} "
            f"({len(shape)} axes); give one spacing per array axis"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"spacing {tuple(values.tolist())} must be finite and positive (mm per voxel)")
    return values


def _check_tolerance(tolerance_mm: float) -> float:
    tolerance = float(tolerance_mm)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance_mm={tolerance_mm!r} must be a finite, non-negative number of millimetres")
    return tolerance


def _as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """Boolean view of a mask; integer arrays must hold only 0 and 1."""
    if arr.dtype == bool:
        return arr
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(
            f"{name} holds values other than 0 and 1; pass a boolean mask (e.g. labels == 2) "
            "or use compute_case_metrics(..., labels=[...]) for label maps"
        )
    return arr.astype(bool)


# --------------------------------------------------------------------------------------------------------------
# Sparse foreground and boundary extraction
# --------------------------------------------------------------------------------------------------------------


class _LabelIndex:
    """Flat indices and values of the nonzero voxels of a label map (or mask), found in one pass."""

    def __init__(self, arr: np.ndarray) -> None:
        self.shape = arr.shape
        self.flat = np.ascontiguousarray(arr).reshape(-1)
        self.nonzero = np.flatnonzero(self.flat)
        self.values = self.flat[self.nonzero]

    def labels(self) -> set[int]:
        return {int(v) for v in np.unique(self.values)}

    def voxels(self, label: int | bool) -> np.ndarray:
        """Sorted flat indices of the voxels equal to ``label``."""
        if self.flat.dtype == bool:
            return self.nonzero if label else self.nonzero[:0]
        return self.nonzero[self.values == label]

    def boundary(self, voxels: np.ndarray, label: int | bool) -> np.ndarray:
        """Coordinates ``(K, ndim)`` (int) of the boundary voxels among ``voxels`` (all equal to ``label``).

        A voxel is on the boundary when one of its 2·ndim face neighbours is outside the array or holds
        another value. Work is proportional to ``len(voxels)``, whatever the array size.
        """
        coords = np.unravel_index(voxels, self.shape)
        on_boundary = np.zeros(voxels.size, dtype=bool)
        stride = 1
        for axis in reversed(range(len(self.shape))):
            position, size = coords[axis], self.shape[axis]
            for step, at_edge in ((-stride, position == 0), (stride, position == size - 1)):
                on_boundary |= at_edge
                inside = ~at_edge & ~on_boundary  # voxels already on the boundary need no more checks
                on_boundary[inside] = self.flat[voxels[inside] + step] != label
            stride *= size
        return np.stack([c[on_boundary] for c in coords], axis=1)


def _intersection_size(a: np.ndarray, b: np.ndarray) -> int:
    """Number of common values of two sorted arrays of unique integers."""
    if a.size == 0 or b.size == 0:
        return 0
    if a.size > b.size:
        a, b = b, a
    position = np.minimum(np.searchsorted(b, a), b.size - 1)
    return int(np.count_nonzero(b[position] == a))


def _directed(points_mm: np.ndarray, tree: cKDTree | None) -> np.ndarray:
    """Distance (mm) from each point to the nearest point of ``tree``; ``+inf`` when the tree is empty."""
    if tree is None:
        return np.full(len(points_mm), np.inf)
    if len(points_mm) == 0:
        return np.zeros(0)
    distances, _ = tree.query(points_mm, k=1)
    return np.asarray(distances, dtype=float)


def _surface_distances_from_coords(
    pred_boundary: np.ndarray, ref_boundary: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    pred_mm = pred_boundary * spacing
    ref_mm = ref_boundary * spacing
    # balanced_tree/compact_nodes off: faster builds, and boundary points are spread evenly enough.
    pred_tree = cKDTree(pred_mm, balanced_tree=False, compact_nodes=False) if len(pred_mm) else None
    ref_tree = cKDTree(ref_mm, balanced_tree=False, compact_nodes=False) if len(ref_mm) else None
    return _directed(pred_mm, ref_tree), _directed(ref_mm, pred_tree)


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def surface_distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary-to-boundary distances between two masks, in mm.

    Args:
        pred: boolean mask (or 0/1 integers), any number of axes, e.g. ``(D, H, W)``.
        ref: mask of the same shape.
        spacing: voxel size in mm per array axis.

    Returns:
        ``(d_pred_to_ref, d_ref_to_pred)``: float64 arrays of length ``|∂pred|`` and ``|∂ref|`` (numbers of
        boundary voxels, in C order of the voxels). An entry is the Euclidean distance from that boundary voxel
        to the nearest boundary voxel of the other mask; it is ``+inf`` when the other mask is empty. Both
        arrays are empty when both masks are.

    Raises:
        TypeError: a float or other non-integer, non-bool dtype.
        ValueError: shapes differ, spacing has the wrong length or is not positive, or integer values
            other than 0/1.
    """
    pred, ref = _check_pair(pred, ref)
    spacing_mm = _check_spacing(spacing, pred.shape)
    pred_index, ref_index = _LabelIndex(_as_mask(pred, "pred")), _LabelIndex(_as_mask(ref, "ref"))
    pred_boundary = pred_index.boundary(pred_index.nonzero, True)
    ref_boundary = ref_index.boundary(ref_index.nonzero, True)
    return _surface_distances_from_coords(pred_boundary, ref_boundary, spacing_mm)


def distance_metrics(d_pred_to_ref: np.ndarray, d_ref_to_pred: np.ndarray, *, tolerance_mm: float) -> dict:
    """hd, hd95, assd and nsd (all but nsd in mm) from the two directed distance arrays.

    Args:
        d_pred_to_ref, d_ref_to_pred: as returned by :func:`surface_distances`.
        tolerance_mm: NSD tolerance τ in mm (``>= 0``).

    Returns:
        ``{"hd", "hd95", "assd", "nsd"}`` as floats. Both arrays empty (both masks empty): 0, 0, 0, 1.
        Exactly one array empty or any distance infinite (one mask empty): inf, inf, inf, 0.

    Raises:
        ValueError: negative or non-finite tolerance.
    """
    tolerance = _check_tolerance(tolerance_mm)
    a = np.asarray(d_pred_to_ref, dtype=float).reshape(-1)
    b = np.asarray(d_ref_to_pred, dtype=float).reshape(-1)
    return {name: value(a, b, tolerance) for name, value in _SURFACE_VALUES.items()}


def _empty_policy(a: np.ndarray, b: np.ndarray, *, both_empty: float, one_empty: float) -> float | None:
    """The value of a surface metric when a mask is empty (see the module docs), else ``None``."""
    if a.size == 0 and b.size == 0:
        return both_empty
    if a.size == 0 or b.size == 0 or np.isinf(a).any() or np.isinf(b).any():
        return one_empty
    return None


def _hd_value(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:  # noqa: ARG001 - common signature
    special = _empty_policy(a, b, both_empty=0.0, one_empty=math.inf)
    return special if special is not None else float(max(a.max(), b.max()))


def _hd95_value(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:  # noqa: ARG001 - common signature
    special = _empty_policy(a, b, both_empty=0.0, one_empty=math.inf)
    return special if special is not None else float(max(np.quantile(a, 0.95), np.quantile(b, 0.95)))


def _assd_value(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:  # noqa: ARG001 - common signature
    special = _empty_policy(a, b, both_empty=0.0, one_empty=math.inf)
    return special if special is not None else float((a.sum() + b.sum()) / (a.size + b.size))


def _nsd_value(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    special = _empty_policy(a, b, both_empty=1.0, one_empty=0.0)
    if special is not None:
        return special
    limit = tolerance * (1.0 + _NSD_RELATIVE_SLACK)
    return float((np.count_nonzero(a <= limit) + np.count_nonzero(b <= limit)) / (a.size + b.size))


# Surface metrics from the two directed distance arrays (mm) and the NSD tolerance (mm).
_SURFACE_VALUES = {"hd": _hd_value, "hd95": _hd95_value, "assd": _assd_value, "nsd": _nsd_value}


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two masks (1.0 when both are empty, 0.0 when one is).

    Raises:
        TypeError, ValueError: as :func:`surface_distances` (no spacing involved).
    """
    pred, ref = _check_pair(pred, ref)
    pred_index, ref_index = _LabelIndex(_as_mask(pred, "pred")), _LabelIndex(_as_mask(ref, "ref"))
    return _dice(pred_index.nonzero, ref_index.nonzero)


def _dice(pred_voxels: np.ndarray, ref_voxels: np.ndarray) -> float:
    total = pred_voxels.size + ref_voxels.size
    if total == 0:
        return 1.0
    return 2.0 * _intersection_size(pred_voxels, ref_voxels) / total


def hd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric Hausdorff distance in mm: the larger of the two directed maximum boundary distances.

    0 when both masks are empty, ``+inf`` when exactly one is. Raises as :func:`surface_distances`.
    """
    return distance_metrics(*surface_distances(pred, ref, spacing), tolerance_mm=0.0)["hd"]


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm: max of the two *directed* 95th percentiles (linear interpolation).

    Same definition as MONAI and Metrics Reloaded (not medpy's percentile of the union; see the module docs).
    0 when both masks are empty, ``+inf`` when exactly one is. Raises as :func:`surface_distances`.
    """
    return distance_metrics(*surface_distances(pred, ref, spacing), tolerance_mm=0.0)["hd95"]


def assd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance in mm: mean of the boundary distances of both directions together.

    0 when both masks are empty, ``+inf`` when exactly one is. Raises as :func:`surface_distances`.
    """
    return distance_metrics(*surface_distances(pred, ref, spacing), tolerance_mm=0.0)["assd"]


def nsd(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], *, tolerance_mm: float) -> float:
    """Normalised surface Dice in [0, 1]: share of boundary voxels of both masks within ``tolerance_mm`` of the other.

    1 when both masks are empty, 0 when exactly one is. Raises as :func:`surface_distances`, and
    ``ValueError`` for a negative tolerance.
    """
    return distance_metrics(*surface_distances(pred, ref, spacing), tolerance_mm=tolerance_mm)["nsd"]


def nsd_tolerance_warning(tolerance_mm: float, spacing: Sequence[float], *, flag: str = "tolerance_mm") -> str | None:
    """A warning when the NSD tolerance is below the largest voxel spacing, else ``None``.

    Boundary voxels of two masks on one grid are 0 or at least one voxel spacing apart, so with τ below the largest
    spacing NSD counts (along that axis) only coinciding boundary voxels and says little beyond Dice.

    Args:
        tolerance_mm: NSD tolerance τ in mm.
        spacing: voxel size in mm per axis (e.g. the largest spacing of a dataset).
        flag: how the user sets τ, named in the message.
    """
    largest = max(float(s) for s in spacing)
    if tolerance_mm >= largest:
        return None
    return (
        f"NSD tolerance {tolerance_mm:g} mm is below the largest voxel spacing {largest:g} mm, so NSD counts only "
        f"boundary voxels that coincide along that axis; pass {flag} {math.ceil(largest * 2) / 2:g} or more for an "
        "informative NSD"
    )


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the image diagonal (between the outer faces): the penalty distance for misses."""
    extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
    return float(np.sqrt(np.sum(extent**2)))


# --------------------------------------------------------------------------------------------------------------
# The metric catalogue: one entry per metric; every table, summary and report section iterates over it
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseData:
    """What one (case, label) offers a metric's ``compute`` function; built once per (case, label).

    Attributes:
        pred_voxels, ref_voxels: foreground voxel counts of the prediction and the reference.
        overlap_voxels: voxels in both.
        voxel_ml: volume of one voxel in millilitres.
        d_pred_to_ref, d_ref_to_pred: directed boundary distances in mm (see :func:`surface_distances`);
            both empty when both masks are, ``+inf`` entries when the other mask is empty.
        tolerance_mm: the NSD tolerance τ in mm.
        diagonal_mm: the image diagonal in mm (the penalty distance for misses).
    """

    pred_voxels: int
    ref_voxels: int
    overlap_voxels: int
    voxel_ml: float
    d_pred_to_ref: np.ndarray
    d_ref_to_pred: np.ndarray
    tolerance_mm: float
    diagonal_mm: float

    @classmethod
    def both_empty(cls, *, tolerance_mm: float, diagonal_mm: float) -> CaseData:
        """A (case, label) absent from both masks."""
        none = np.zeros(0)
        return cls(0, 0, 0, 0.0, none, none, float(tolerance_mm), float(diagonal_mm))

    @property
    def pred_volume_ml(self) -> float:
        return self.pred_voxels * self.voxel_ml

    @property
    def ref_volume_ml(self) -> float:
        return self.ref_voxels * self.voxel_ml

    @property
    def miss(self) -> bool:
        """Exactly one of the two masks is empty."""
        return (self.pred_voxels == 0) != (self.ref_voxels == 0)


MISS_PENALTIES = ("diagonal",)  # named penalties; "diagonal" = the case's image diagonal in mm (column diagonal_mm)
LEADERBOARD_STATISTICS = ("mean", "sd", "ci", "median")  # of the penalised per-case values; "ci" = 95 % bootstrap


@dataclass(frozen=True)
class Metric:
    """One catalogue entry: how a metric is computed, shown and aggregated.

    Attributes:
        name: column name in ``metrics.csv``, the ``segbench evaluate`` CSV and the report's tables.
        compute: ``compute(case: CaseData) -> float``; a pure function that defines its own empty-mask values.
        label: display name (``"HD95"``).
        unit: ``"mm"``, ``"ml"`` or ``""`` for a dimensionless value.
        higher_is_better: direction used to mark the best model and to orient paired comparisons.
        definition: one line for the report's definitions section.
        miss_penalty: what an infinite value (a miss) counts as in means and medians: ``"diagonal"`` (the
            case's image diagonal in mm), a number, or ``None`` when the metric is finite on a miss (Dice and
            NSD are 0 there).
        leaderboard: statistics of the penalised per-case values in the leaderboard and ``summary.csv``
            (columns ``<name>_<statistic>``, ``ci`` gives ``<name>_ci_low`` / ``<name>_ci_high``); empty:
            not in the leaderboard.
        box_plot: draw a box plot of every out-of-fold case.
        headline: also give it per-fold tables, paired Wilcoxon tests and rank stability in the report.
        digits: decimals shown in the report.
    """

    name: str
    compute: Callable[[CaseData], float]
    label: str
    unit: str = ""
    higher_is_better: bool = True
    definition: str = ""
    miss_penalty: str | float | None = None
    leaderboard: tuple[str, ...] = ("mean",)
    box_plot: bool = True
    headline: bool = False
    digits: int = 3

    @property
    def penalised_column(self) -> str:
        """Per-case column with misses replaced by the penalty (``hd95_pen``); ``name`` when there is none."""
        return self.name if self.miss_penalty is None else f"{self.name}_pen"

    def display(self, *, unit: bool = True) -> str:
        """``"HD95* (mm)"``: the label, ``*`` when misses are penalised, the unit in brackets."""
        text = self.label + ("" if self.miss_penalty is None else "*")
        return f"{text} ({self.unit})" if unit and self.unit else text


def _surface(value: Callable[[np.ndarray, np.ndarray, float], float]) -> Callable[[CaseData], float]:
    return lambda case: value(case.d_pred_to_ref, case.d_ref_to_pred, case.tolerance_mm)


def _dice_value(case: CaseData) -> float:
    total = case.pred_voxels + case.ref_voxels
    return 1.0 if total == 0 else 2.0 * case.overlap_voxels / total


_CATALOGUE: dict[str, Metric] = {}
# Keys of a metric row that are not metrics (metric names must not take them).
_ROW_PREFIX = ("label",)
_ROW_SUFFIX = ("tolerance_mm", "pred_volume_ml", "ref_volume_ml", "pred_empty", "ref_empty", "miss", "diagonal_mm")
PRIMARY_METRIC = "dice"  # ranks the models (leaderboard order, "best" model, Pareto fronts, median case)


def register_metric(
    name: str,
    compute: Callable[[CaseData], float],
    *,
    label: str | None = None,
    unit: str = "",
    higher_is_better: bool = True,
    definition: str = "",
    miss_penalty: str | float | None = None,
    leaderboard: Sequence[str] = ("mean",),
    box_plot: bool = True,
    headline: bool = False,
    digits: int = 3,
) -> Metric:
    """Add a metric to the catalogue (after the existing ones): it then appears in ``metrics.csv`` of new runs,
    the ``segbench evaluate`` CSV and summary, the leaderboard and ``summary.csv``, the box plots and the report's
    definitions, with no other change. Arguments as the :class:`Metric` attributes (``label`` defaults to ``name``).

    A metric registered at run time exists in this process only: jobs run by ``--executor local`` on the CPU or
    one GPU compute it; jobs in separate processes (several GPUs, Slurm) do not.

    Returns:
        The new entry.

    Raises:
        ValueError: the name is taken (by a metric or another column of a metric row) or not an identifier,
            an unknown ``miss_penalty`` or leaderboard statistic.
    """
    if not name.isidentifier() or name in _CATALOGUE or name in _ROW_PREFIX + _ROW_SUFFIX:
        taken = ", ".join(metric_names()) or "none"
        raise ValueError(f"metric name {name!r} is taken or not an identifier (metrics: {taken}); choose another")
    if isinstance(miss_penalty, str) and miss_penalty not in MISS_PENALTIES:
        raise ValueError(f"miss_penalty {miss_penalty!r} is unknown; use {', '.join(MISS_PENALTIES)}, a number or None")
    unknown = sorted(set(leaderboard) - set(LEADERBOARD_STATISTICS))
    if unknown:
        raise ValueError(f"leaderboard statistics {unknown} unknown; choose from {', '.join(LEADERBOARD_STATISTICS)}")
    metric = Metric(name, compute, label or name, unit, higher_is_better, definition, miss_penalty,
                    tuple(leaderboard), box_plot, headline, digits)  # fmt: skip
    _CATALOGUE[name] = metric
    return metric


def unregister_metric(name: str) -> Metric:
    """Remove a metric from the catalogue (for tests and plugins that registered one); returns its entry.

    Raises:
        KeyError: no metric of that name.
    """
    if name not in _CATALOGUE:
        raise KeyError(f"no metric {name!r}; registered: {', '.join(metric_names())}")
    return _CATALOGUE.pop(name)


def metric_catalogue() -> tuple[Metric, ...]:
    """Every registered metric, in registration (= column) order."""
    return tuple(_CATALOGUE.values())


def metric_names() -> tuple[str, ...]:
    """Names of the registered metrics, in column order."""
    return tuple(_CATALOGUE)


def get_metric(name: str) -> Metric:
    """The catalogue entry of ``name``.

    Raises:
        KeyError: no metric of that name (the message lists them).
    """
    if name not in _CATALOGUE:
        raise KeyError(f"no metric {name!r}; registered: {', '.join(metric_names())}")
    return _CATALOGUE[name]


def metric_keys() -> tuple[str, ...]:
    """Keys of one row of :func:`compute_case_metrics`, in order: ``label``, every metric, then volumes and flags."""
    return (*_ROW_PREFIX, *metric_names(), *_ROW_SUFFIX)


register_metric("dice", _dice_value, label="Dice", leaderboard=("mean", "sd", "ci"), headline=True,
                definition="2|A∩B| / (|A| + |B|) of the prediction A and the reference B.")  # fmt: skip
register_metric("hd", _surface(_hd_value), label="HD", unit="mm", higher_is_better=False, miss_penalty="diagonal",
                leaderboard=(), box_plot=False, digits=2,
                definition="the larger of the two directed maximum surface distances.")  # fmt: skip
register_metric("hd95", _surface(_hd95_value), label="HD95", unit="mm", higher_is_better=False,
                miss_penalty="diagonal", leaderboard=("median", "mean"), headline=True, digits=2,
                definition="the larger of the two directed 95th percentiles of surface distances "
                "(linear interpolation).")  # fmt: skip
register_metric("assd", _surface(_assd_value), label="ASSD", unit="mm", higher_is_better=False,
                miss_penalty="diagonal", digits=2,
                definition="mean of all surface distances in both directions.")  # fmt: skip
register_metric("nsd", _surface(_nsd_value), label="NSD",
                definition="share of boundary voxels of both masks within the tolerance (tolerance_mm) of the other "
                "boundary.")  # fmt: skip


def _row(label: int, case: CaseData) -> dict:
    return {
        "label": int(label),
        **{metric.name: float(metric.compute(case)) for metric in _CATALOGUE.values()},
        "tolerance_mm": float(case.tolerance_mm),
        "pred_volume_ml": float(case.pred_volume_ml),
        "ref_volume_ml": float(case.ref_volume_ml),
        "pred_empty": bool(case.pred_voxels == 0),
        "ref_empty": bool(case.ref_voxels == 0),
        "miss": bool(case.miss),
        "diagonal_mm": float(case.diagonal_mm),
    }


def both_empty_metrics(label: int, *, diagonal_mm: float, tolerance_mm: float) -> dict:
    """The row of :func:`compute_case_metrics` for a label absent from both masks (dice 1, distances 0, nsd 1)."""
    return _row(label, CaseData.both_empty(tolerance_mm=tolerance_mm, diagonal_mm=diagonal_mm))


# --------------------------------------------------------------------------------------------------------------
# Misses in aggregates: one rule for every mean and median
# --------------------------------------------------------------------------------------------------------------


def penalise(metric: Metric | str, values: Any, diagonal_mm: Any) -> np.ndarray:
    """Per-case values with infinite entries (misses) replaced by the metric's stated penalty.

    Args:
        metric: a catalogue entry or its name.
        values: per-case values, shape ``(N,)``.
        diagonal_mm: the cases' image diagonals in mm, shape ``(N,)`` or a scalar (used by ``"diagonal"``).

    Returns:
        float64 array ``(N,)``; NaN (no value) stays NaN, and values stay as they are when the metric has no
        penalty.
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    x = np.asarray(values, dtype=float).reshape(-1)
    if metric.miss_penalty is None:
        return x.copy()
    penalty = diagonal_mm if metric.miss_penalty == "diagonal" else metric.miss_penalty
    penalty = np.broadcast_to(np.asarray(penalty, dtype=float).reshape(-1), x.shape)
    return np.where(np.isinf(x), penalty, x)


@dataclass(frozen=True)
class Summary:
    """Mean, median and sample standard deviation of a sample, over its non-NaN values."""

    mean: float
    median: float
    sd: float
    n: int


def summarise(values: Any) -> Summary:
    """:class:`Summary` of already penalised values (NaN dropped; ``sd`` needs two values, else NaN).

    The penalised mean and the penalised median of a metric are ``summarise(penalise(metric, values, diag))``:
    every table, summary and report uses this one definition.
    """
    x = np.asarray(values, dtype=float).reshape(-1)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    sd = float(np.std(x, ddof=1)) if x.size > 1 and np.all(np.isfinite(x)) else math.nan
    return Summary(float(np.mean(x)), float(np.median(x)), sd, int(x.size))


# --------------------------------------------------------------------------------------------------------------
# Every metric of a case
# --------------------------------------------------------------------------------------------------------------


def _label_indices(pred: np.ndarray, ref: np.ndarray) -> tuple[_LabelIndex, _LabelIndex, bool]:
    """Indices of both arrays and whether both are boolean masks (then ``True`` is label 1)."""
    both_bool = pred.dtype == bool and ref.dtype == bool
    # A bool array next to a label map is read as the label map {0, 1}; the view costs nothing.
    if not both_bool:
        pred = pred.view(np.uint8) if pred.dtype == bool else pred
        ref = ref.view(np.uint8) if ref.dtype == bool else ref
    return _LabelIndex(pred), _LabelIndex(ref), both_bool


def compute_case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float],
    *,
    labels: Sequence[int] | None = None,
    tolerance_mm: float = 2.0,
) -> list[dict]:
    """Every catalogue metric of one case, per label, from one pass over each array.

    Args:
        pred: predicted label map ``(D, H, W)`` (any integer dtype), or a boolean mask.
        ref: reference label map or mask of the same shape.
        spacing: voxel size in mm per array axis.
        labels: label values to score. ``None``: ``[1]`` when both inputs are boolean (``True`` is label 1),
            else every nonzero value present in either array (so no row at all when both are all zero; pass
            ``labels`` to get "both empty" rows). Labels absent from both arrays give the both-empty row. Label 0
            (background) is refused: to score background, pass boolean masks (e.g. ``pred == 0, ref == 0``).
        tolerance_mm: NSD tolerance τ in mm.

    Returns:
        One dict per label, sorted by label, with keys :func:`metric_keys`: ``label``; one value per catalogue
        metric (built in: ``dice``; ``hd``, ``hd95``, ``assd`` in mm; ``nsd`` at ``tolerance_mm``);
        ``tolerance_mm``; ``pred_volume_ml``, ``ref_volume_ml``; ``pred_empty``, ``ref_empty``, ``miss``
        (exactly one empty); ``diagonal_mm`` (image diagonal, the stated penalty for averaging misses). Values
        are plain Python floats, ints and bools.

    Raises:
        TypeError: float (e.g. probabilities) or other non-integer dtype.
        ValueError: shapes differ, spacing has the wrong length or is not positive, negative tolerance, label 0.
    """
    pred, ref = _check_pair(pred, ref)
    spacing_mm = _check_spacing(spacing, pred.shape)
    tolerance = _check_tolerance(tolerance_mm)
    pred_index, ref_index, both_bool = _label_indices(pred, ref)
    wanted = _wanted_labels(labels, pred_index, ref_index, both_bool)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    diagonal = image_diagonal_mm(pred.shape, spacing_mm)

    rows = []
    for label in wanted:
        value: int | bool = bool(label == 1) if both_bool else label
        if both_bool and label != 1:
            pred_voxels, ref_voxels = pred_index.nonzero[:0], ref_index.nonzero[:0]
        else:
            pred_voxels, ref_voxels = pred_index.voxels(value), ref_index.voxels(value)
        if pred_voxels.size == 0 and ref_voxels.size == 0:
            rows.append(both_empty_metrics(label, diagonal_mm=diagonal, tolerance_mm=tolerance))
            continue
        distances = _surface_distances_from_coords(
            pred_index.boundary(pred_voxels, value), ref_index.boundary(ref_voxels, value), spacing_mm
        )
        overlap = _intersection_size(pred_voxels, ref_voxels)
        case = CaseData(pred_voxels.size, ref_voxels.size, overlap, voxel_ml, *distances, tolerance, diagonal)
        rows.append(_row(label, case))
    return rows


def _wanted_labels(labels: Sequence[int] | None, pred_index, ref_index, both_bool: bool) -> list[int]:
    """The sorted label values :func:`compute_case_metrics` scores (see its ``labels``).

    Raises:
        ValueError: label 0 is asked for.
    """
    if labels is None:
        return [1] if both_bool else sorted(pred_index.labels() | ref_index.labels())
    wanted = sorted({int(label) for label in labels})
    if 0 in wanted:
        # Label 0 is what every other label map value is measured against; scoring it through the label index
        # (which only holds nonzero voxels) would report a false "both empty" row.
        raise ValueError(
            "labels=[0] asks to score the background, which a label map cannot express; pass boolean masks "
            "instead, e.g. compute_case_metrics(pred == 0, ref == 0, spacing)"
        )
    return wanted
