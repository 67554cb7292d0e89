"""The training step's order: the loss is read once, after the backward pass and before the optimiser step."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from segbench import training
from segbench.config import TrainConfig


def _batches(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield {"image": torch.randn((2, 1, 8, 8, 8), generator=generator),
               "label": (torch.rand((2, 8, 8, 8), generator=generator) > 0.6).to(torch.uint8)}  # fmt: skip


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))


def _train(model: torch.nn.Module, iterations: int) -> training.LoopState:
    config = TrainConfig(iterations=iterations, precision="fp32", log_every=1, checkpoint_every=1)
    return training.train(model=model, optimizer=training.make_optimizer(model, config), batches=_batches(),
                          config=config, device=torch.device("cpu"), out_channels=1)  # fmt: skip


def test_the_loss_is_read_once_per_step_after_backward_and_before_the_optimiser_step(monkeypatch):
    # Reading the loss synchronises on CUDA: read before backward, it stalls the CPU while the GPU runs the forward.
    model = _model()
    before = copy.deepcopy(model.state_dict())
    reads: list[tuple[bool, bool]] = []

    def spy(loss: torch.Tensor) -> float:
        gradients = [p.grad for p in model.parameters()]
        untouched = all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        reads.append((all(g is not None and bool(g.abs().sum() > 0) for g in gradients), untouched))
        return float(loss.detach())

    monkeypatch.setattr(training, "read_loss", spy)
    state = _train(model, iterations=1)
    assert reads == [(True, True)]  # one read: gradients already there, weights not yet stepped
    assert math.isfinite(state.loss) and state.iteration == 1


def test_a_non_finite_loss_is_never_applied(monkeypatch):
    model = _model()
    _train(model, iterations=1)
    weights = copy.deepcopy(model.state_dict())
    real = training.segmentation_loss
    monkeypatch.setattr(training, "segmentation_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(training.TrainingDiverged, match="loss became nan at iteration 1"):
        _train(model, iterations=1)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # the NaN step left no trace
