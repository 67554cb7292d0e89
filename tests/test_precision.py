"""Precision and memory-format resolution: what ``auto`` means on this hardware, and the contexts it yields."""

from __future__ import annotations

import pytest
import torch

from segbench import precision


def test_cpu_auto_follows_native_bf16_instructions():
    expected = "bf16" if precision.cpu_has_native_bf16() else "fp32"
    assert precision.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize("choice", ["fp32", "bf16", "fp16"])
def test_explicit_precision_passes_through(choice):
    assert precision.resolve_precision(choice, "cpu") == choice


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        precision.resolve_precision("half", "cpu")


def test_memory_format_auto_is_channels_last_and_unknown_is_refused():
    assert precision.resolve_memory_format("auto", "cpu") == "channels_last"
    assert precision.resolve_memory_format("contiguous", "cpu") == "contiguous"
    with pytest.raises(ValueError, match="--memory-format"):
        precision.resolve_memory_format("nhwc", "cpu")


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_is_a_no_op():
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    with precision.autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert conv(x).dtype == torch.float32


def test_grad_scaler_only_for_fp16_on_cuda():
    assert precision.uses_grad_scaler("fp16", "cuda")
    assert not precision.uses_grad_scaler("bf16", "cuda")
    assert not precision.uses_grad_scaler("fp16", "cpu")


def test_channels_last_moves_tensors_and_modules():
    x = precision.to_memory_format(torch.randn(1, 2, 3, 4, 5), "channels_last")
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    conv = precision.to_memory_format(torch.nn.Conv3d(2, 2, 3), "channels_last")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    y = torch.randn(1, 2, 3, 4, 5)
    assert precision.to_memory_format(y, "contiguous") is y


def test_hardware_name_names_the_cpu_and_its_kernels():
    name = precision.hardware_name("cpu")
    assert precision.cpu_features()["capability"] in name
