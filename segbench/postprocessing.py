"""Postprocessing decided on the folds: nnU-Net's largest-connected-component rule, the same for every model.

The rule (nnunetv2 2.8.1 ``determine_postprocessing``, the specification; this is segbench's own code):

1. *Foreground step*: in every out-of-fold prediction keep only the largest connected component of all foreground
   labels together (voxels of other components become background). Accepted when the mean foreground Dice strictly
   rises and no label's mean Dice falls.
2. *Label steps* (only when the task has more than one foreground label; with one label step 1 already is that
   step): for each label in ascending order, on the predictions as step 1 left them, keep only that label's largest
   component. Accepted when that label's mean Dice strictly rises.

Definitions, as in nnU-Net:

- Connectivity is full: 26 neighbours in 3D (8 in 2D). Components tied for the largest size are all kept. An empty
  mask stays empty.
- A case's Dice for a label is ``2 TP / (2 TP + FP + FN)``; a case where the label is in neither the prediction nor
  the reference has no Dice (NaN) and does not count in that label's mean (segbench's metrics.csv counts it as 1).
- A label's mean is over the cases that have a Dice (NaN when none has); the foreground mean is the mean of the label
  means (NaN when any is NaN). A comparison with NaN is false: such a step is rejected.
- nnU-Net's region-based tasks and ignore label do not exist in segbench: the steps act on label values.

A label step changes only its own label's mask, so its Dice depends only on whether step 1 was accepted: one pass
over the cases (:func:`decide`) yields every count the rule needs.

Functions on arrays are pure: they never modify their input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "RULE",
    "Decision",
    "Step",
    "apply_decision",
    "decide",
    "dice_counts",
    "keep_largest_component",
    "largest_component_mask",
    "mean_dice",
]

RULE = "largest connected component (nnU-Net determine_postprocessing), full connectivity"


def largest_component_mask(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (full connectivity: 26 neighbours in 3D).

    Args:
        mask: boolean array of any dimension, e.g. ``(D, H, W)``.

    Returns:
        Boolean array of the same shape: True on the largest component; on every one of them when several share the
        largest size; all False for an empty mask.

    Raises:
        TypeError: ``mask`` is not boolean.
    """
    if mask.dtype != bool:
        raise TypeError(f"largest_component_mask needs a boolean mask, got dtype {mask.dtype}")
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(components.ravel())
    sizes[0] = 0  # background
    keep = np.flatnonzero(sizes == sizes.max())
    return np.isin(components, keep)


def keep_largest_component(segmentation: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """A copy of ``segmentation`` in which the voxels of ``labels`` outside the largest component of their union are 0.

    Args:
        segmentation: integer label map, e.g. ``(D, H, W)``.
        labels: the foreground labels taken together (one label for a label step, all for the foreground step).

    Returns:
        Array of the same shape and dtype; voxels of other labels are unchanged.
    """
    mask = np.isin(segmentation, np.asarray(labels, dtype=segmentation.dtype))
    out = segmentation.copy()
    out[mask & ~largest_component_mask(mask)] = 0
    return out


def dice_counts(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """True positives, false positives and false negatives of each label.

    Args:
        prediction, reference: integer label maps of one shape, e.g. ``(D, H, W)``.
        labels: the foreground labels, in order.

    Returns:
        ``(len(labels), 3)`` int64: TP, FP, FN per label.

    Raises:
        ValueError: the shapes differ.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    counts = np.zeros((len(labels), 3), dtype=np.int64)
    for row, label in enumerate(labels):
        pred, ref = prediction == label, reference == label
        tp = int(np.count_nonzero(pred & ref))
        counts[row] = (tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp)
    return counts


def mean_dice(counts: np.ndarray) -> np.ndarray:
    """Per-label mean Dice over cases, nnU-Net's way: a case with TP + FP + FN = 0 has no Dice and is left out.

    Args:
        counts: ``(cases, labels, 3)`` TP, FP, FN (:func:`dice_counts` stacked).

    Returns:
        ``(labels,)`` float64; NaN for a label no case has a Dice for.
    """
    counts = np.asarray(counts, dtype=np.int64)
    counts = counts.reshape(-1, counts.shape[-2], 3)
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denominator = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a label with no Dice anywhere: NaN, as documented
        per_case = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)
        return np.nanmean(per_case, axis=0) if len(per_case) else np.full(counts.shape[-2], np.nan)


@dataclass(frozen=True)
class Step:
    """One step of the rule as tried on a model's out-of-fold predictions.

    Attributes:
        labels: the labels whose (joint) largest component the step keeps.
        kind: ``"foreground"`` (all labels together) or ``"label"``.
        accepted: whether the rule accepted it.
        dice_before, dice_after: mean Dice per label (nnU-Net's way, :func:`mean_dice`) without and with the step,
            on the predictions as the earlier accepted steps left them.
    """

    labels: tuple[int, ...]
    kind: str
    accepted: bool
    dice_before: Mapping[int, float]
    dice_after: Mapping[int, float]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "labels": list(self.labels), "accepted": self.accepted,
                "dice_before": _json_dice(self.dice_before), "dice_after": _json_dice(self.dice_after)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(tuple(int(v) for v in data["labels"]), str(data["kind"]), bool(data["accepted"]),
                   _dice_from_json(data["dice_before"]), _dice_from_json(data["dice_after"]))  # fmt: skip


@dataclass(frozen=True)
class Decision:
    """The postprocessing a model's folds decided: every step tried, in order, and the Dice before and after.

    Attributes:
        labels: the task's foreground labels.
        cases: how many out-of-fold cases decided it.
        steps: every step tried (accepted or not), in the order they are applied.
        dice_before, dice_after: mean Dice per label of the raw and of the postprocessed predictions.
    """

    labels: tuple[int, ...]
    cases: int
    steps: tuple[Step, ...]
    dice_before: Mapping[int, float]
    dice_after: Mapping[int, float]

    @property
    def applied(self) -> tuple[tuple[int, ...], ...]:
        """The label sets of the accepted steps, in order: what :func:`apply_decision` does."""
        return tuple(step.labels for step in self.steps if step.accepted)

    @property
    def foreground_before(self) -> float:
        return _foreground_mean(self.dice_before, self.labels)

    @property
    def foreground_after(self) -> float:
        return _foreground_mean(self.dice_after, self.labels)

    def describe(self) -> str:
        """``"keep the largest foreground component"``, ``"keep the largest component of label 2"`` or ``"none"``."""
        parts = [
            "keep the largest foreground component" if step.kind == "foreground" else
            f"keep the largest component of label {step.labels[0]}"
            for step in self.steps if step.accepted
        ]  # fmt: skip
        return "; ".join(parts) or "none"

    def to_json(self) -> dict[str, Any]:
        return {"rule": RULE, "labels": list(self.labels), "cases": self.cases,
                "applied": [list(labels) for labels in self.applied], "steps": [s.to_json() for s in self.steps],
                "dice_before": _json_dice(self.dice_before), "dice_after": _json_dice(self.dice_after),
                "foreground_dice_before": _json_float(self.foreground_before),
                "foreground_dice_after": _json_float(self.foreground_after)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """Read :meth:`to_json` back.

        Raises:
            KeyError, TypeError, ValueError: a malformed entry.
        """
        return cls(tuple(int(v) for v in data["labels"]), int(data["cases"]),
                   tuple(Step.from_json(s) for s in data["steps"]), _dice_from_json(data["dice_before"]),
                   _dice_from_json(data["dice_after"]))  # fmt: skip


def apply_decision(segmentation: np.ndarray, decision: Decision) -> np.ndarray:
    """``segmentation`` postprocessed as ``decision`` says (its accepted steps in order); a new array.

    Args:
        segmentation: integer label map, e.g. ``(D, H, W)``.

    Returns:
        Array of the same shape and dtype (a copy even when no step is accepted).
    """
    out = segmentation.copy()
    for labels in decision.applied:
        out = keep_largest_component(out, labels)
    return out


def decide(cases: Iterable[tuple[np.ndarray, np.ndarray]], labels: Sequence[int]) -> Decision:
    """Decide the postprocessing of one model from its out-of-fold predictions (the rule of the module docstring).

    Args:
        cases: ``(prediction, reference)`` integer label maps of one case each (shapes per case equal, e.g.
            ``(D, H, W)``), every out-of-fold case of the model; iterated once.
        labels: the task's foreground labels.

    Raises:
        ValueError: no case, no label, or a pair whose shapes differ.
    """
    labels = tuple(sorted(int(label) for label in labels))
    if not labels:
        raise ValueError("postprocessing needs at least one foreground label")
    raw, foreground, per_label_raw, per_label_fg = [], [], [], []
    for prediction, reference in cases:
        raw.append(dice_counts(prediction, reference, labels))
        kept = keep_largest_component(prediction, labels)
        foreground.append(dice_counts(kept, reference, labels))
        if len(labels) > 1:  # each label's own step, on the raw and on the foreground-step predictions
            per_label_raw.append([dice_counts(keep_largest_component(prediction, (lab,)), reference, (lab,))[0]
                                  for lab in labels])  # fmt: skip
            per_label_fg.append([dice_counts(keep_largest_component(kept, (lab,)), reference, (lab,))[0]
                                 for lab in labels])  # fmt: skip
    if not raw:
        raise ValueError("postprocessing needs at least one out-of-fold case")
    before, with_foreground = mean_dice(np.stack(raw)), mean_dice(np.stack(foreground))
    accepted = bool(np.mean(with_foreground) > np.mean(before)) and not bool(np.any(with_foreground < before))
    steps = [Step(labels, "foreground", accepted, _by_label(labels, before), _by_label(labels, with_foreground))]
    after = with_foreground if accepted else before
    if len(labels) > 1:
        # A label step changes only its label's mask: its candidate Dice does not depend on the other label steps.
        candidates = mean_dice(np.asarray(per_label_fg if accepted else per_label_raw))
        for index, label in enumerate(labels):
            trial = after.copy()
            trial[index] = candidates[index]
            better = bool(trial[index] > after[index])
            steps.append(Step((label,), "label", better, _by_label(labels, after), _by_label(labels, trial)))
            after = trial if better else after
    return Decision(labels, len(raw), tuple(steps), _by_label(labels, before), _by_label(labels, after))


def _by_label(labels: Sequence[int], values: np.ndarray) -> dict[int, float]:
    return {label: float(value) for label, value in zip(labels, values, strict=True)}


def _foreground_mean(dice: Mapping[int, float], labels: Sequence[int]) -> float:
    return float(np.mean([dice[label] for label in labels])) if labels else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)  # JSON has no NaN: a label without a Dice is null


def _json_dice(dice: Mapping[int, float]) -> dict[str, float | None]:
    return {str(label): _json_float(value) for label, value in sorted(dice.items())}


def _dice_from_json(data: Mapping[str, Any]) -> dict[int, float]:
    return {int(label): math.nan if value is None else float(value) for label, value in data.items()}
