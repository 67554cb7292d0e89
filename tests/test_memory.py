"""Exact tensor memory of a training step: the FakeTensor estimate agrees with the real measurement."""

from __future__ import annotations

import pytest
import torch

from segbench.memory import training_step_memory
from segbench.registry import list_models, model_info, needs_plan


def _patches(divisor: int) -> list[tuple[int, int, int]]:
    # Two voxels a side at the deepest level: batch norm refuses a 1-voxel bottleneck when training.
    side = max(16, 2 * divisor)
    return [(side, side, side), (side + divisor, side, side + divisor)]


# The tutorial's two networks in the quick tier; every other registered model in the slow one (seconds each).
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=() if name in ("fcn", "unet") else pytest.mark.slow)
        for name in list_models()
        if not needs_plan(name)
    ],  # plan-built networks: tests/test_nnunet_networks.py
)
def test_fake_estimate_within_10_percent_of_the_measured_peak(name):
    divisor = model_info(name, in_channels=1, out_channels=1).divisor
    for patch in _patches(divisor):
        common = dict(in_channels=1, out_channels=1, patch_size=patch, batch_size=1, precision="fp32")
        real = training_step_memory(name, **common)
        fake = training_step_memory(name, **common, fake=True)
        assert real.peak_mb > 0
        assert abs(fake.peak_mb - real.peak_mb) <= 0.10 * real.peak_mb, (name, patch, real, fake)


def test_breakdown_adds_up_and_names_the_parts():
    memory = training_step_memory(
        "unet", in_channels=1, out_channels=1, patch_size=(16, 16, 16), batch_size=2, precision="fp32"
    )
    parts = (memory.parameters_mb + memory.buffers_mb + memory.gradients_mb + memory.optimizer_mb
             + memory.activations_mb + memory.temporaries_mb + memory.other_mb)  # fmt: skip
    assert parts == pytest.approx(memory.peak_mb)
    # unet has 769,023 fp32 parameters; Adam keeps two moments of each (the tracked step is a steady-state one).
    assert memory.parameters_mb == pytest.approx(769_023 * 4 / 2**20, rel=0.01)
    assert memory.optimizer_mb == pytest.approx(2 * 769_023 * 4 / 2**20, rel=0.01)
    assert set(memory.as_row()) >= {"tensor_peak_mb", "tensor_activations_mb"}


def test_bf16_and_bigger_patches_change_the_peak_the_expected_way():
    def peak(patch, precision):
        return training_step_memory(
            "fcn", in_channels=1, out_channels=1, patch_size=patch, batch_size=1, precision=precision, fake=True
        ).peak_mb

    assert peak((32, 32, 32), "fp32") > 4 * peak((16, 16, 16), "fp32")  # activations grow with the voxel count
    assert peak((32, 32, 32), "bf16") < 0.8 * peak((32, 32, 32), "fp32")


def test_measuring_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    training_step_memory("fcn", in_channels=1, out_channels=1, patch_size=(16, 16, 16), batch_size=1)
    assert torch.equal(torch.rand(3), expected)
