"""The nnunet recipe's loss: Dice + CE on hand-computed cases, batch Dice, deep-supervision weights and wrapper."""

from __future__ import annotations

import math

import pytest
import torch

from segbench.recipes.nnunet_loss import (
    DICE_SMOOTH,
    deep_supervision_loss,
    deep_supervision_weights,
    dice_ce_loss,
    nnunet_loss,
)

S = DICE_SMOOTH


def _flat(*targets: list[int]) -> torch.Tensor:
    """Targets ``(B, 1, 1, N)``: one row of N voxels per sample."""
    return torch.tensor(targets, dtype=torch.uint8).reshape(len(targets), 1, 1, -1)


def test_uniform_logits_give_ln2_minus_the_hand_computed_dice():
    logits = torch.zeros(1, 2, 1, 1, 2)  # softmax 0.5 / 0.5 everywhere
    target = _flat([0, 1])
    # CE = ln 2 per voxel; foreground Dice: intersection 0.5, predicted 1.0, actual 1.
    expected = math.log(2) - (2 * 0.5 + S) / (1.0 + 1 + S)
    assert dice_ce_loss(logits, target, batch_dice=False).item() == pytest.approx(expected, rel=1e-6)


def test_batch_dice_pools_the_batch_and_per_sample_dice_averages():
    logits = torch.zeros(2, 2, 1, 1, 2)
    target = _flat([0, 0], [0, 1])
    per_sample = (S / (1.0 + S) + (1.0 + S) / (2.0 + S)) / 2  # sample 0 has no foreground: its Dice is ~0
    pooled = (2 * 0.5 + S) / (2.0 + 1 + S)
    assert dice_ce_loss(logits, target, batch_dice=False).item() == pytest.approx(math.log(2) - per_sample, rel=1e-6)
    assert dice_ce_loss(logits, target, batch_dice=True).item() == pytest.approx(math.log(2) - pooled, rel=1e-6)


def test_background_is_left_out_of_the_dice_and_classes_are_averaged():
    # Three classes; logits favour class 1 on voxel 0 and class 2 on voxel 1 strongly (probabilities ~1).
    logits = torch.full((1, 3, 1, 1, 3), -30.0)
    logits[0, 1, 0, 0, 0] = logits[0, 2, 0, 0, 1] = logits[0, 0, 0, 0, 2] = 30.0
    target = _flat([1, 2, 0])
    # Perfect: CE ~0, both foreground Dice ~1, background (also perfect) would not change the mean either way.
    assert dice_ce_loss(logits, target, batch_dice=True).item() == pytest.approx(-1.0, abs=1e-6)
    wrong = _flat([2, 1, 0])  # foreground classes swapped: both Dice ~0, CE ~60 on two of three voxels
    assert dice_ce_loss(logits, wrong, batch_dice=True).item() == pytest.approx(40.0, rel=1e-3)


def test_target_may_carry_a_channel_axis_and_the_loss_is_float32():
    logits = torch.randn(2, 3, 4, 4, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 4, 4, 4), dtype=torch.uint8)
    a = dice_ce_loss(logits, target, batch_dice=True)
    b = dice_ce_loss(logits, target[:, None], batch_dice=True)
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="K >= 2"):
        dice_ce_loss(torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 2, 2, 2, dtype=torch.uint8), batch_dice=True)
    with pytest.raises(ValueError, match="does not match"):
        dice_ce_loss(torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 2, 2, 3, dtype=torch.uint8), batch_dice=True)


def test_deep_supervision_weights_halve_drop_the_coarsest_and_sum_to_one():
    assert deep_supervision_weights(4) == pytest.approx((8 / 14, 4 / 14, 2 / 14, 0.0))
    assert deep_supervision_weights(2) == (1.0, 0.0)
    for n in range(2, 8):
        weights = deep_supervision_weights(n)
        assert len(weights) == n and sum(weights) == pytest.approx(1.0) and weights[-1] == 0
        assert all(a == pytest.approx(2 * b) for a, b in zip(weights[:-2], weights[1:-1], strict=True))
    with pytest.raises(ValueError, match="at least two"):
        deep_supervision_weights(1)


def _pyramid(batch: int = 2, classes: int = 3, sizes=((8, 8, 8), (4, 4, 4), (2, 2, 2))):
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(batch, classes, *s, generator=generator, requires_grad=True) for s in sizes]
    targets = [torch.randint(0, classes, (batch, *s), generator=generator).to(torch.uint8) for s in sizes]
    return outputs, targets


def test_deep_supervision_loss_is_the_weighted_sum_and_the_coarsest_output_gets_no_gradient():
    outputs, targets = _pyramid()
    total = deep_supervision_loss(outputs, targets, batch_dice=False)
    weights = deep_supervision_weights(3)
    expected = sum(w * dice_ce_loss(o, t, batch_dice=False) for o, t, w in zip(outputs, targets, weights, strict=True))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    total.backward()
    assert outputs[0].grad is not None and outputs[1].grad is not None and outputs[2].grad is None
    assert nnunet_loss(outputs, targets, batch_dice=False).item() == pytest.approx(total.item(), rel=1e-6)


def test_custom_weights_and_mismatches():
    outputs, targets = _pyramid()
    only_first = deep_supervision_loss(outputs, targets, batch_dice=True, weights=(1, 0, 0))
    assert only_first.item() == pytest.approx(dice_ce_loss(outputs[0], targets[0], batch_dice=True).item(), rel=1e-6)
    with pytest.raises(ValueError, match="must agree"):
        deep_supervision_loss(outputs, targets[:2], batch_dice=True)
    with pytest.raises(ValueError, match="nonzero"):
        deep_supervision_loss(outputs, targets, batch_dice=True, weights=(0, 0, 0))
    with pytest.raises(ValueError, match="both as lists"):
        nnunet_loss(outputs, targets[0], batch_dice=True)
    single = nnunet_loss(outputs[0], targets[0], batch_dice=True)
    assert single.item() == pytest.approx(dice_ce_loss(outputs[0], targets[0], batch_dice=True).item())
