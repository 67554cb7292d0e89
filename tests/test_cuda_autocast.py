"""Dtype flow under CPU and CUDA autocast rules (the latter emulated on the CPU), and the memory estimate it decides."""

from __future__ import annotations

import pytest
import torch

from segbench import precision
from segbench.cuda_autocast import cuda_autocast, op_dtypes
from segbench.memory import training_step_memory
from segbench.registry import build_model
from segbench.training import segmentation_loss

BF16, FP32 = str(torch.bfloat16), str(torch.float32)


def _model_and_input(name: str, device: str = "cpu"):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=1).to(device).train()
    return model, torch.randn(1, 1, 8, 8, 8, device=device)


def _dtypes(ops: list[tuple[str, str]], name: str) -> set[str]:
    return {dtype for op, dtype in ops if op == name}


@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_dtype_flow_under_both_autocast_rule_sets(name):
    model, x = _model_and_input(name)
    cpu = op_dtypes(lambda: model(x), rules="cpu")
    cuda = op_dtypes(lambda: model(x), rules="cuda")
    assert [op for op, _ in cpu] == [op for op, _ in cuda]  # the same ops, only their dtypes differ
    for ops in (cpu, cuda):
        assert _dtypes(ops, "conv3d") == {BF16} and ops[-1][1] == BF16  # convolutions and the logits in bf16
    # The rule sets differ at pooling: CPU autocast runs max_pool3d in fp32, CUDA in its input's dtype.
    assert _dtypes(cpu, "max_pool3d") == {FP32} and _dtypes(cuda, "max_pool3d") == {BF16}
    # So the normalisation after a pool sees fp32 on the CPU and bf16 on a GPU; the first one sees the fp32 image.
    assert _dtypes(cpu, "batch_norm") == {FP32, BF16} and _dtypes(cuda, "batch_norm") == {FP32, BF16}
    for ops, expected in ((cpu, FP32), (cuda, BF16)):
        after_pool = [_next(ops, i, "batch_norm") for i, (op, _) in enumerate(ops) if op == "max_pool3d"]
        assert after_pool and set(after_pool) == {expected}


def _next(ops: list[tuple[str, str]], start: int, name: str) -> str:
    """The output dtype of the first ``name`` op after position ``start``."""
    return next(dtype for op, dtype in ops[start + 1 :] if op == name)


@pytest.mark.parametrize("rules", ["cpu", "cuda"])
def test_a_training_step_under_either_rules_has_fp32_loss_and_gradients(rules):
    model, x = _model_and_input("unet")
    label = (torch.rand(1, 8, 8, 8) > 0.7).to(torch.uint8)  # uint8 class indices, as the loader ships them
    with precision.autocast("bf16", "cpu", rules=rules):
        logits = model(x)
    loss = segmentation_loss(logits, label, kind="dice_bce")
    loss.backward()
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_cuda_emulation_follows_cuda_autocast_policies():
    x32, x16 = torch.randn(2, 3), torch.randn(2, 3).bfloat16()
    weight = torch.nn.Parameter(torch.randn(4, 3))
    with cuda_autocast(torch.bfloat16) as mode:
        assert torch.nn.functional.linear(x32, weight).dtype == torch.bfloat16  # lower precision
        assert torch.nn.functional.linear(x32, weight).dtype == torch.bfloat16
        assert len(mode._weight_casts) == 1  # the weight is cast once per context, as CUDA autocast caches it
        assert torch.softmax(x16, 1).dtype == torch.float32 and x16.sum().dtype == torch.float32  # fp32 ops
        assert torch.cat([x16, x32]).dtype == torch.float32 and torch.cat([x16, x16]).dtype == torch.bfloat16  # promote
        assert torch.relu(x16).dtype == torch.bfloat16 and torch.relu(x32).dtype == torch.float32  # not listed
        assert torch.mm(x32.double(), x32.double().T).dtype == torch.float64  # float64 is never cast
    assert not mode._weight_casts  # the cache ends with the context
    with pytest.raises(ValueError, match="cannot apply 'cpu' autocast rules on a cuda device"):
        op_dtypes(lambda: None, rules="cpu", device="cuda")


@pytest.mark.parametrize("name", ["fcn", pytest.param("unet", marks=pytest.mark.slow)])
def test_bf16_estimate_for_a_gpu_agrees_with_a_step_under_emulated_cuda_autocast(name):
    common = dict(in_channels=1, out_channels=1, patch_size=(16, 16, 16), batch_size=1, precision="bf16",
                  memory_format="channels_last")  # fmt: skip
    estimate = training_step_memory(name, **common, fake=True, device="cuda").peak_mb  # FakeTensor, CUDA's lists
    emulated = training_step_memory(name, **common, device="cpu", rules="cuda").peak_mb  # real CPU step, CUDA's lists
    assert estimate == pytest.approx(emulated, rel=0.02)
    # CPU autocast keeps fp32 copies after each pool: an estimate under the CPU lists describes another step.
    cpu_rules = training_step_memory(name, **common, fake=True, device="cpu").peak_mb
    assert cpu_rules != pytest.approx(estimate, rel=0.005)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_cuda_autocast_dtypes_equal_the_emulation(name, dtype):
    if dtype == torch.bfloat16 and not precision.cuda_has_native_bf16("cuda"):
        pytest.skip("this GPU emulates bf16")
    model, x = _model_and_input(name)
    emulated = op_dtypes(lambda: model(x), rules="cuda", dtype=dtype)
    model, x = model.cuda(), x.cuda()
    real = op_dtypes(lambda: model(x), rules="cuda", dtype=dtype, device="cuda")
    assert real == emulated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_cuda_step_memory_equals_the_estimate(name):
    common = dict(in_channels=1, out_channels=1, patch_size=(32, 32, 32), batch_size=2, precision="bf16",
                  memory_format="channels_last")  # fmt: skip
    tracked = training_step_memory(name, **common, device="cuda").peak_mb
    estimate = training_step_memory(name, **common, device="cuda", fake=True).peak_mb
    assert estimate == pytest.approx(tracked, rel=0.02)
