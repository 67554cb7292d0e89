"""Exact tensor memory of one training step, measured or estimated without allocating anything.

"How much GPU memory does it need?" is answered by the peak bytes of *live tensors* during one training step
(forward, loss, backward, optimiser step) at the run's patch, batch size, precision and memory format. PyTorch's own
tracker (:class:`torch.distributed._tools.mem_tracker.MemTracker`) attributes every tensor storage to parameters,
buffers, gradients, optimiser state, activations (saved for backward) or temporaries, and records the breakdown at the
moment of the peak. The figure does not depend on the process's history, on the allocator or on the device, so it
is the memory figure the leaderboard and the Pareto plot use. Allocator overhead comes on top: on CUDA compare with
``torch.cuda.max_memory_allocated`` (``jobs.csv`` has both).

Two modes:

* :func:`training_step_memory` with ``fake=False`` runs one real step on random inputs of the right shape (CPU or
  CUDA), on a freshly built copy of the model, with the global RNG state forked so training is not disturbed.
* ``fake=True`` runs the same step under :class:`torch._subclasses.fake_tensor.FakeTensorMode`: tensors carry only
  shapes and dtypes, nothing is allocated or computed, so a Task02-sized 128×128×64 patch is estimated in about a
  second on a laptop CPU without a GPU (``segbench models --memory``). In bf16/fp16 the dtypes follow the autocast op
  lists of the device the estimate is for: a GPU's are emulated on the CPU (:mod:`segbench.cuda_autocast`), since CPU
  autocast keeps fp32 copies that a GPU step does not have (12 % more for fcn, 7 % for unet at 16×16×32, batch 2).

The step first runs once untracked, so that the optimiser state exists (Adam's two moments): the tracked step is a
steady-state step, as every step after the first one in real training.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException

from segbench.precision import autocast, guard_small_convolutions, to_memory_format

__all__ = ["StepMemory", "estimate_memory", "training_step_memory"]

_MIB = 2**20


@dataclass(frozen=True)
class StepMemory:
    """Peak live-tensor memory of one training step and its parts at that moment, in MiB (2**20 bytes).

    ``peak_mb`` is the sum of the parts. ``activations_mb`` are tensors saved for backward, ``temporaries_mb``
    everything else created during the step (outputs, loss terms, autocast copies of weights, workspace tensors).
    """

    peak_mb: float
    parameters_mb: float
    buffers_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    temporaries_mb: float
    other_mb: float

    def as_row(self, prefix: str = "tensor_") -> dict[str, float]:
        """Flat dict for tables, e.g. ``{"tensor_peak_mb": 83.1, "tensor_parameters_mb": 2.9, ...}``."""
        return {f"{prefix}{name}": round(value, 3) for name, value in self.__dict__.items()}


def training_step_memory(
    model_name: str,
    *,
    in_channels: int,
    out_channels: int,
    patch_size: Sequence[int],
    batch_size: int,
    precision: str = "fp32",
    memory_format: str = "contiguous",
    optimizer: str = "adam",
    device: torch.device | str = "cpu",
    fake: bool = False,
    rules: str | None = None,
) -> StepMemory:
    """Peak tensor memory of one steady-state training step of a registered model.

    Args:
        model_name: registry name, e.g. ``"unet"`` or ``"unet_w16_d4"``.
        in_channels: image channels; out_channels: logit channels (1 = sigmoid + BCE, else softmax + CE).
        patch_size: ``(D, H, W)`` voxels; each side must suit the model's divisor.
        batch_size: patches per step.
        precision: resolved precision (``"fp32"``, ``"bf16"``, ``"fp16"``); see :mod:`segbench.precision`.
        memory_format: ``"channels_last"`` or ``"contiguous"``.
        optimizer: ``"adam"`` or ``"sgd"`` (optimiser state differs: two moments vs one momentum buffer).
        device: where a real measurement runs; for a ``fake`` estimate, the device it is *for*: its autocast op lists
            decide the dtypes (CUDA and CPU autocast differ, see :mod:`segbench.cuda_autocast`), while nothing runs.
        fake: estimate under ``FakeTensorMode`` (on the CPU, nothing allocated) instead of running.
        rules: autocast op lists, ``"cpu"`` or ``"cuda"``; ``None``: those of ``device``. ``"cuda"`` with a CPU
            ``device`` measures a real CPU step with CUDA's dtypes (the check of a fake CUDA estimate without a GPU).
            The CPU bf16 small-convolution guard is part of the ``"cpu"`` rules only, as in training.

    Returns:
        A :class:`StepMemory`.

    Raises:
        ModelError: unknown model. ValueError: CPU rules on a CUDA device. Any exception of the model's forward or
        backward propagates.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    target = torch.device(device)
    run_on = torch.device("cpu") if fake else target
    rules = rules or target.type
    shape = (batch_size, in_channels, *(int(s) for s in patch_size))
    numerics = {"precision": precision, "memory_format": memory_format, "rules": rules}
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[run_on] if run_on.type == "cuda" else []), mode:
        model, opt = _model_and_optimizer(model_name, shape, out_channels, optimizer, run_on, **numerics)
        step = _training_step(model, opt, shape, out_channels, run_on, **numerics)
        step()  # creates the optimiser state: the tracked step is a steady-state one
        return _tracked(step, model, opt, run_on)


def _model_and_optimizer(
    name: str,
    shape: tuple[int, ...],
    out_channels: int,
    optimizer: str,
    device: torch.device,
    *,
    precision: str,
    memory_format: str,
    rules: str,
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A fresh model on ``device`` in the step's memory format (and guard), with its optimiser."""
    from segbench.registry import build_model

    try:
        model = build_model(name, in_channels=shape[1], out_channels=out_channels)
    except DataDependentOutputException:
        model = _built_outside_fake_mode(name, in_channels=shape[1], out_channels=out_channels)
    if device.type != "cpu":
        model = model.to(device)
    _to_memory_format(model, memory_format)
    # As train() does on the rules' device: the CPU bf16 guard runs small convolutions in fp32 (never on a GPU).
    guard_small_convolutions(model, precision, rules)
    model.train()
    return model, _optimizer(model, optimizer)


def _built_outside_fake_mode(name: str, *, in_channels: int, out_channels: int) -> nn.Module:
    """The model built with real tensors, then its parameters and buffers turned into the active mode's fake ones.

    For builders that read a tensor's value while constructing (MONAI's SwinUNETR: ``linspace(...).item()`` for its
    drop-path rates), which a FakeTensor cannot give. Costs a real build (host memory of the parameters, briefly).
    """
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    from segbench.registry import build_model

    mode = torch._guards.detect_fake_mode()
    with unset_fake_temporarily():
        model = build_model(name, in_channels=in_channels, out_channels=out_channels)
    converted: dict[int, torch.Tensor] = {}  # shared (tied) tensors stay shared

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in converted:
            with unset_fake_temporarily():
                plain = tensor.detach()
            converted[id(tensor)] = mode.from_tensor(plain)
        return converted[id(tensor)]

    for module in model.modules():
        for key, parameter in module._parameters.items():
            if parameter is not None:
                module._parameters[key] = nn.Parameter(fake(parameter), requires_grad=parameter.requires_grad)
        for key, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[key] = fake(buffer)
    return model


def _training_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    shape: tuple[int, ...],
    out_channels: int,
    device: torch.device,
    *,
    precision: str,
    memory_format: str,
    rules: str,
) -> Callable[[], None]:
    """One training step on random inputs of ``shape``, as :func:`segbench.training.train` takes it."""
    from segbench.training import segmentation_loss

    kind = "dice_bce" if out_channels == 1 else "dice_ce"
    image = to_memory_format(torch.randn(shape, device=device), memory_format)
    # uint8 class indices, as the loader ships them
    label = torch.randint(0, max(out_channels, 2), (shape[0], *shape[2:]), device=device, dtype=torch.uint8)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(precision, device, rules=rules):
            logits = model(image)
        segmentation_loss(logits, label, kind=kind).backward()
        opt.step()

    return step


def _to_memory_format(model: nn.Module, memory_format: str) -> None:
    # Parameter by parameter: under FakeTensorMode, Module.to(memory_format=...) fails to swap parameters.
    if memory_format != "channels_last":
        return
    for parameter in model.parameters():
        if parameter.dim() == 5:
            parameter.data = parameter.data.contiguous(memory_format=torch.channels_last_3d)


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def _tracked(step, model: nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> StepMemory:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        step()
    snapshot = tracker.get_tracker_snapshot("peak")
    parts = {str(key).rsplit(".", 1)[-1]: value for key, value in _device_snapshot(snapshot, device).items()}

    def mb(key: str) -> float:
        return parts.get(key, 0) / _MIB

    return StepMemory(
        peak_mb=mb("Total"),
        parameters_mb=mb("PARAM"),
        buffers_mb=mb("BUFFER"),
        gradients_mb=mb("GRAD"),
        optimizer_mb=mb("OPT"),
        activations_mb=mb("ACT"),
        temporaries_mb=mb("TEMP"),
        other_mb=mb("OTH"),
    )


def _device_snapshot(snapshot: dict, device: torch.device) -> dict:
    # The tracker keys devices as torch.device objects ("cuda:0" for "cuda"); one device is tracked here.
    for key, value in snapshot.items():
        if torch.device(key).type == device.type:
            return value
    return {}


def estimate_memory(
    models: Sequence[str],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    precision: str = "fp32",
    memory_format: str = "channels_last",
    optimizer: str = "adam",
    in_channels: int = 1,
    out_channels: int = 1,
    device: torch.device | str = "cuda",
    progress: bool = False,
):
    """Estimated peak training-step tensor memory of each model, without a GPU and without allocating (FakeTensor).

    What ``segbench models --memory`` prints; e.g. Task02-sized patches of 128×128×64 at batch 2 take seconds per
    model on a laptop CPU. Allocator overhead (CUDA caching allocator, cuDNN workspaces) comes on top.

    Args:
        models: registry names.
        patch_size, batch_size, precision, memory_format, optimizer, in_channels, out_channels: as
            :func:`training_step_memory` (precision and memory format resolved, not ``auto``).
        device: the device the estimate is for (its autocast op lists decide reduced-precision dtypes); default a
            GPU, whose memory is the usual question.
        progress: show a progress bar (stderr).

    Returns:
        A pandas DataFrame, one row per model in the given order: ``model, divisor, precision, memory_format,
        optimizer, patch_size`` (``"DxHxW"``), ``batch_size``, the ``tensor_*_mb`` columns of :class:`StepMemory`,
        and ``error`` (empty, or why the model could not be estimated, e.g. a patch its divisor does not divide;
        its memory columns are then NaN).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from segbench.errors import ModelError
    from segbench.registry import model_info

    names = [field for field in StepMemory.__dataclass_fields__]
    common = {"precision": precision, "memory_format": memory_format, "optimizer": optimizer,
              "patch_size": "x".join(str(int(s)) for s in patch_size), "batch_size": batch_size}  # fmt: skip
    rows = []
    for name in tqdm(models, desc="estimating memory", unit="model", disable=not progress, leave=False):
        row: dict = {"model": name, "divisor": None, **common, **{f"tensor_{n}": math.nan for n in names}, "error": ""}
        try:
            row["divisor"] = model_info(name, in_channels=in_channels, out_channels=out_channels).divisor
            if any(int(side) % row["divisor"] for side in patch_size):
                raise ValueError(f"patch sides must be multiples of {row['divisor']}")
            memory = training_step_memory(name, in_channels=in_channels, out_channels=out_channels,
                                          patch_size=patch_size, batch_size=batch_size, precision=precision,
                                          memory_format=memory_format, optimizer=optimizer, fake=True,
                                          device=device)  # fmt: skip
        except (ModelError, ValueError, RuntimeError, NotImplementedError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        else:
            row.update(memory.as_row())
        rows.append(row)
    return pd.DataFrame(rows)
