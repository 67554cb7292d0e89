"""The nnunet recipe's loss: soft Dice + cross-entropy over softmax logits, and its deep-supervision weighting.

The specification is nnU-Net 2.8.1's ``nnUNetTrainer._build_loss`` for label (not region) datasets without an ignore
label: ``DC_and_CE_loss`` with ``MemoryEfficientSoftDiceLoss`` (foreground classes only, smooth 1e-5, batch Dice as
the plan's ``batch_dice`` says), cross-entropy and Dice weighted 1 and 1, and ``DeepSupervisionWrapper`` with weights
1/2^i, the coarsest output 0, normalised to sum 1. The Dice term enters as ``-Dice`` (nnU-Net's convention), so the
loss of a perfect prediction is about -1 and the loss curves compare with nnU-Net's directly.

Unlike nnU-Net, which computes the loss under autocast on CUDA, the loss is computed in float32 (the logits are cast
first), as every segbench loss is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Dice smoothing of nnU-Net's trainer (numerator and denominator).
DICE_SMOOTH = 1e-5

__all__ = ["DICE_SMOOTH", "deep_supervision_loss", "deep_supervision_weights", "dice_ce_loss", "nnunet_loss"]


def dice_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, *, batch_dice: bool, smooth: float = DICE_SMOOTH
) -> torch.Tensor:
    """Cross-entropy plus negative soft Dice of the foreground classes (nnU-Net's ``DC_and_CE_loss``).

    Args:
        logits: ``(B, K, *spatial)`` raw scores, ``K`` = number of classes including background (softmax over K).
        target: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer class indices in ``0..K-1``.
        batch_dice: one Dice per class over the whole batch (the plan's ``batch_dice``), else one per sample and
            class, averaged.
        smooth: added to the Dice numerator and denominator.

    Returns:
        Scalar float32: ``CE - mean foreground Dice``, in ``[-1, ∞)``.

    Raises:
        ValueError: fewer than two classes, or target and logits disagree in batch or spatial shape.
    """
    if logits.ndim < 3 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (B, K, *spatial) with K >= 2 classes (softmax), got {tuple(logits.shape)}")
    if target.ndim == logits.ndim:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    logits = logits.float()
    target = target.long()
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)[:, 1:]
    with torch.no_grad():
        truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    axes = tuple(range(2, logits.ndim))
    intersection = (probs * truth).sum(axes)  # (B, K - 1)
    predicted = probs.sum(axes)
    actual = truth.sum(axes)
    if batch_dice:
        intersection, predicted, actual = intersection.sum(0), predicted.sum(0), actual.sum(0)
    dice = (2 * intersection + smooth) / (actual + predicted + smooth).clamp_min(1e-8)
    return ce - dice.mean()


def deep_supervision_weights(n: int) -> tuple[float, ...]:
    """Loss weights of ``n`` deep-supervision outputs, full resolution first: 1/2^i, the coarsest 0, summing to 1.

    Example: ``n = 4`` gives ``(8/14, 4/14, 2/14, 0)``.

    Raises:
        ValueError: ``n < 2`` (with one output the only weight would be 0).
    """
    if n < 2:
        raise ValueError(f"deep supervision needs at least two outputs, got {n}")
    raw = [1.0 / 2**i for i in range(n - 1)] + [0.0]
    total = sum(raw)
    return tuple(w / total for w in raw)


def deep_supervision_loss(
    outputs: Sequence[torch.Tensor],
    targets: Sequence[torch.Tensor],
    *,
    batch_dice: bool,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Weighted sum of :func:`dice_ce_loss` over deep-supervision outputs (nnU-Net's ``DeepSupervisionWrapper``).

    Args:
        outputs: logits per resolution, full resolution first, each ``(B, K, *spatial_i)``.
        targets: class indices per resolution, each ``(B, *spatial_i)`` (or ``(B, 1, *spatial_i)``), e.g. the
            loader's ``label`` list.
        batch_dice: as in :func:`dice_ce_loss`.
        weights: one per output; default :func:`deep_supervision_weights` of ``len(outputs)``. Outputs of weight 0
            are not evaluated (they get no gradient, as in nnU-Net).

    Raises:
        ValueError: the numbers of outputs, targets and weights differ, or every weight is 0.
    """
    weights = deep_supervision_weights(len(outputs)) if weights is None else tuple(float(w) for w in weights)
    if not len(outputs) == len(targets) == len(weights):
        raise ValueError(f"{len(outputs)} outputs, {len(targets)} targets and {len(weights)} weights: they must agree")
    if not any(weights):
        raise ValueError("at least one deep-supervision weight must be nonzero")
    terms = [w * dice_ce_loss(o, t, batch_dice=batch_dice) for o, t, w in zip(outputs, targets, weights) if w != 0]
    return torch.stack(terms).sum()


def nnunet_loss(
    output: torch.Tensor | Sequence[torch.Tensor],
    target: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch_dice: bool,
) -> torch.Tensor:
    """The nnunet recipe's loss of one batch: :func:`deep_supervision_loss` for a list of outputs, else
    :func:`dice_ce_loss`.

    Args:
        output: logits ``(B, K, *spatial)``, or a list of them (full resolution first) from a model with deep
            supervision.
        target: class indices ``(B, *spatial)``, or a list matching ``output``.
        batch_dice: the plan's ``batch_dice``.

    Raises:
        ValueError: a list of outputs with a single target tensor (or the reverse), or as the called functions.
    """
    if isinstance(output, torch.Tensor) != isinstance(target, torch.Tensor):
        raise ValueError("deep supervision needs one target per output: pass both as lists or both as tensors")
    if isinstance(output, torch.Tensor):
        return dice_ce_loss(output, target, batch_dice=batch_dice)  # type: ignore[arg-type]
    return deep_supervision_loss(output, target, batch_dice=batch_dice)  # type: ignore[arg-type]
