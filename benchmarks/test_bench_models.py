"""Forward-pass and training-step speed of every registered model, with FLOP/s and share of a matmul peak.

Scenario (per device):

* CPU: batch 1, a 32³ patch (rounded up to the model's divisor), float32, one thread (the benchmark machine
  is shared; one thread also makes timings steadier).
* CUDA: batch 2, a Task02-sized (128, 128, 64) patch (rounded up to the divisor), bfloat16 autocast and
  channels-last as in the training recipe; ``torch.cuda.synchronize()`` inside every timed call.

A training step is: zero grads, forward, BCE-with-logits loss against a fixed random mask, backward, SGD step.
Each test records in ``extra_info``: parameters, input shape, device, precision, FLOPs of one call (counted
with ``torch.utils.flop_counter`` on the ``meta`` device for the exact shape), achieved FLOP/s (FLOPs / median
time) and its share of the peak of a large matrix product measured once per session on the same device with
the same precision — the reference that makes figures from different machines comparable.

Run (CPU subset, about a minute)::

    pytest benchmarks/test_bench_models.py -k "fcn or unet_w20" --benchmark-only --benchmark-autosave

Compare with an earlier run: ``--benchmark-compare``. Select models with ``-k``; the MONAI models appear
when MONAI is installed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import smoke_mode

from segbench.profiling import count_flops, matmul_peak_flops
from segbench.registry import build_model, list_models, model_info

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SMOKE = smoke_mode()  # CI: tiny shapes, the bodies run once untimed (--benchmark-disable)
BATCH, PATCH = (1, (16, 16, 16)) if SMOKE else (2, (128, 128, 64)) if CUDA else (1, (32, 32, 32))
AMP_DTYPE = torch.bfloat16 if CUDA else None
ROUNDS, WARMUP_ROUNDS = (10, 2) if CUDA else (3, 1)


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def _autocast():
    return torch.autocast("cuda", dtype=AMP_DTYPE) if AMP_DTYPE is not None else torch.autocast("cpu", enabled=False)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def matmul_peak() -> float:
    """FLOP/s of a large square matrix product (best of 5) in the precision the models run in."""
    n = 256 if SMOKE else 8192 if CUDA else 1024
    return matmul_peak_flops(DEVICE, size=n, repeats=5, dtype=AMP_DTYPE or torch.float32)


def _input_shape(divisor: int) -> tuple[int, ...]:
    # At least 2 voxels per side at the deepest level: batch norm in training mode needs more than one value.
    return (BATCH, 1, *(divisor * max(2, math.ceil(side / divisor)) for side in PATCH))


def _flops(name: str, shape: tuple[int, ...], *, train_step: bool) -> int:
    with torch.device("meta"):
        model = build_model(name, in_channels=1, out_channels=1)
    try:
        return count_flops(model, shape, train_step=train_step)
    except (NotImplementedError, RuntimeError):  # layers that cannot run on meta: count on the CPU
        return count_flops(build_model(name, in_channels=1, out_channels=1), shape, train_step=train_step)


def _record(benchmark, name: str, model: torch.nn.Module, shape, flops: int, peak: float) -> None:
    if benchmark.disabled:  # smoke mode: the body ran; there is nothing timed to record
        return
    median = benchmark.stats.stats.median
    achieved = flops / median
    benchmark.extra_info.update(
        {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "input_shape": list(shape),
            "device": torch.cuda.get_device_name() if CUDA else "cpu",
            "threads": torch.get_num_threads(),
            "precision": str(AMP_DTYPE or torch.float32),
            "flops": flops,
            "achieved_flop_per_s": achieved,
            "matmul_peak_flop_per_s": peak,
            "share_of_matmul_peak": achieved / peak,
        }
    )


def _prepare(name: str):
    torch.manual_seed(0)
    shape = _input_shape(model_info(name).divisor)
    model = build_model(name, in_channels=1, out_channels=1).to(DEVICE)
    x = torch.randn(shape, device=DEVICE)
    if CUDA:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return model, x, shape


@pytest.mark.parametrize("name", list_models())
def test_forward(benchmark, matmul_peak, name):
    model, x, shape = _prepare(name)
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), _autocast():
            model(x)
        _sync()

    benchmark.pedantic(forward, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    _record(benchmark, name, model, shape, _flops(name, shape, train_step=False), matmul_peak)


@pytest.mark.parametrize("name", list_models())
def test_train_step(benchmark, matmul_peak, name):
    model, x, shape = _prepare(name)
    model.train()
    target = (torch.rand(shape, device=DEVICE) > 0.5).float()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast():
            loss = F.binary_cross_entropy_with_logits(model(x).float(), target)
        loss.backward()
        optimizer.step()
        _sync()

    benchmark.pedantic(train_step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    _record(benchmark, name, model, shape, _flops(name, shape, train_step=True), matmul_peak)
