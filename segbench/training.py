"""The one training loop every model goes through (a short loop plus callbacks, in the spirit of minGPT).

The budget is a number of optimiser steps or of seconds, identical for every model. The learning rate follows a
poly schedule computed from the progress through that budget, so resuming needs no scheduler state. Per step the loop
measures how long it waited for data and how long the step took (with ``torch.cuda.synchronize`` on CUDA), raises
:class:`TrainingDiverged` on a NaN/inf loss, and hands a :class:`LoopState` to each callback (learning-curve logging,
checkpoints, time limits). The final weights are what gets evaluated: there is no best-on-validation selection.

Numerics: the forward pass runs under the resolved ``precision`` (:mod:`segbench.precision`: bf16 or fp16 autocast,
or fp32) and model and batches in the resolved memory format; the loss is computed in fp32 outside autocast. Only this
loop creates a GradScaler, and only for fp16 on CUDA.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from segbench import precision as numerics
from segbench.config import TrainConfig
from segbench.profiling import ThroughputMeter, synchronize


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; ``iteration`` is the step that produced it."""

    def __init__(self, iteration: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at iteration {iteration}")
        self.iteration = iteration
        self.loss = loss


@dataclass
class LoopState:
    """What callbacks see after every step. ``iteration`` counts finished steps (1 after the first)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None  # created by train() for fp16 on CUDA
    iteration: int = 0
    elapsed_s: float = 0.0  # training wall time so far, including time before a resume
    loss: float = math.nan
    lr: float = math.nan
    meter: ThroughputMeter = field(default_factory=ThroughputMeter)
    finished: bool = False
    scaler_state: dict | None = None  # AMP scaler state of a restored checkpoint, loaded when train() makes the scaler
    precision: str = "fp32"  # resolved by train(): "fp32", "bf16" or "fp16"
    memory_format: str = "contiguous"  # resolved by train(): "channels_last" or "contiguous"


Callback = Callable[[LoopState], None]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net's choice), with the configured weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=0.99, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def poly_lr(config: TrainConfig, progress: float) -> float:
    """Learning rate at ``progress`` ∈ [0, 1] of the budget: ``lr * (1 - progress) ** poly_power``."""
    return config.lr * max(0.0, 1.0 - progress) ** config.poly_power


def loss_kind(config: TrainConfig, out_channels: int) -> str:
    """Resolve ``loss="auto"``: Dice + BCE for a single output channel, Dice + CE otherwise."""
    if config.loss != "auto":
        return config.loss
    return "dice_bce" if out_channels == 1 else "dice_ce"


def segmentation_loss(
    logits: torch.Tensor | list[torch.Tensor],
    target: torch.Tensor | list[torch.Tensor],
    *,
    kind: str,
    smooth: float = 1e-5,
    batch_dice: bool = False,
) -> torch.Tensor:
    """Soft Dice (over the whole batch, foreground classes) plus (binary) cross-entropy.

    Args:
        logits: ``(B, K, D, H, W)``; ``K == 1`` for ``dice_bce``. For ``nnunet`` with deep supervision, a list of
            logits, full resolution first.
        target: ``(B, D, H, W)`` integer class indices (0 = background; for ``dice_bce`` anything > 0 is foreground);
            for ``nnunet`` with deep supervision, a list matching ``logits``.
        kind: ``"dice_bce"``, ``"dice_ce"`` or ``"nnunet"`` (nnU-Net's Dice + CE and deep-supervision weighting,
            :func:`segbench.recipes.nnunet_loss.nnunet_loss`; ``batch_dice`` as the plan says).

    Returns:
        Scalar loss (float32, computed outside autocast for stability).
    """
    if kind == "nnunet":
        from segbench.recipes.nnunet_loss import nnunet_loss

        return nnunet_loss(logits, target, batch_dice=batch_dice)
    logits = logits.float()
    spatial = (0, 2, 3, 4)
    if kind == "dice_bce":
        truth = (target > 0).unsqueeze(1).float()
        probs = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, truth)
    else:
        ce = F.cross_entropy(logits, target.long())
        probs = torch.softmax(logits, dim=1)[:, 1:]
        truth = F.one_hot(target.long(), logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    intersection = (probs * truth).sum(spatial)
    denominator = probs.sum(spatial) + truth.sum(spatial)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return ce + (1 - dice.mean())


def train(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[dict],
    config: TrainConfig,
    device: torch.device,
    out_channels: int,
    state: LoopState | None = None,
    callbacks: Sequence[Callback] = (),
) -> LoopState:
    """Train until the budget is spent; return the final :class:`LoopState`.

    Args:
        model: network on ``device``; ``forward(B, C, D, H, W) -> (B, out_channels, D, H, W)`` logits.
        optimizer: built by :func:`make_optimizer` (its state may come from a checkpoint).
        batches: iterator of dicts with ``image`` ``(B, C, D, H, W)`` float and ``label`` ``(B, D, H, W)`` integer
            class indices; it must already be positioned at ``state.iteration`` when resuming.
        config: budget, learning rate schedule, loss, precision and memory format (``auto`` resolved for ``device``).
        device: where to train.
        out_channels: number of logit channels (1 = binary task with BCE).
        state: a restored state to continue from (iteration, elapsed time, AMP scaler state); ``None`` starts
            afresh.
        callbacks: called after every step with the state, and once more with ``state.finished = True``.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (the offending step is not applied).
        torch.OutOfMemoryError: propagated for the caller to record as an ``oom`` result.
    """
    if state is None:
        state = LoopState(model=model, optimizer=optimizer)
    state.precision = numerics.resolve_precision(config.precision, device)
    state.memory_format = numerics.resolve_memory_format(config.memory_format, device)
    if numerics.uses_grad_scaler(state.precision, device) and state.scaler is None:
        state.scaler = _make_scaler(state.scaler_state)
    # In place (parameters keep their identity), so the optimizer built before still holds them. For bf16 on CPU this
    # also runs convolutions smaller than their kernel in fp32 (a torch kernel defect, see segbench.precision).
    numerics.prepare_model(model, precision=state.precision, memory_format=state.memory_format, device=device)
    kind = loss_kind(config, out_channels)
    model.train()
    while (progress := _progress(config, state)) < 1.0:
        lr = poly_lr(config, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        _step(state, batches, config=config, device=device, kind=kind)
        state.lr = lr
        for callback in callbacks:
            callback(state)
    state.finished = True
    for callback in callbacks:
        callback(state)
    return state


def _progress(config: TrainConfig, state: LoopState) -> float:
    """Share of the budget (iterations or seconds) spent so far."""
    if config.time_budget_s is not None:
        return state.elapsed_s / config.time_budget_s
    return state.iteration / config.iterations


def _step(state: LoopState, batches: Iterator[dict], *, config: TrainConfig, device: torch.device, kind: str) -> None:
    """Fetch one batch and take one optimiser step; advance ``state`` (iteration, elapsed time, loss, meter).

    The loss is read after the backward pass and before the optimiser step (see the comment below).

    Raises:
        TrainingDiverged: the loss is NaN or infinite (the step is not applied).
    """
    started = time.perf_counter()
    batch = next(batches)
    image = numerics.to_memory_format(batch["image"].to(device, non_blocking=True), state.memory_format)
    label = batch["label"]  # with deep supervision a list of targets, full resolution first
    label = (
        [t.to(device, non_blocking=True) for t in label]
        if isinstance(label, list)
        else label.to(device, non_blocking=True)
    )
    fetched = time.perf_counter()

    state.optimizer.zero_grad(set_to_none=True)
    with numerics.autocast(state.precision, device):
        logits = state.model(image)
    loss = segmentation_loss(logits, label, kind=kind, batch_dice=config.batch_dice)  # fp32: logits cast first
    _backward(state, loss)
    # Read only now: reading the loss synchronises, and before backward it would stall the CPU until the forward
    # pass ran instead of letting it queue the backward pass meanwhile. Still before the optimiser step, so the
    # divergence check stays exact: a NaN/inf loss is never applied.
    loss_value = read_loss(loss)
    if not math.isfinite(loss_value):
        raise TrainingDiverged(state.iteration + 1, loss_value)
    _clip_and_step(state, config)
    synchronize(device)
    finished = time.perf_counter()

    state.iteration += 1
    state.elapsed_s += finished - started
    state.loss = loss_value
    state.meter.record(data_wait_s=fetched - started, step_s=finished - fetched, voxels=image[:, :1].numel())


def read_loss(loss: torch.Tensor) -> float:
    """The loss as a Python float (on CUDA this waits for the GPU): the step's one read of a device value."""
    return float(loss.detach())


def _backward(state: LoopState, loss: torch.Tensor) -> None:
    """Backward pass (of the scaled loss when there is an AMP scaler)."""
    (state.scaler.scale(loss) if state.scaler is not None else loss).backward()


def _clip_and_step(state: LoopState, config: TrainConfig) -> None:
    """Gradient clipping and optimiser step (through the AMP scaler when there is one)."""
    if state.scaler is not None:
        state.scaler.unscale_(state.optimizer)
        _clip(state.model, config)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        _clip(state.model, config)
        state.optimizer.step()


def _make_scaler(saved: dict | None) -> torch.amp.GradScaler:
    # The one place an AMP gradient scaler is made: float16 autocast on CUDA needs loss scaling.
    scaler = torch.amp.GradScaler("cuda")
    if saved:
        scaler.load_state_dict(saved)
    return scaler


def _clip(model: nn.Module, config: TrainConfig) -> None:
    if config.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
