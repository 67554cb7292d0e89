"""Forward-pass and training-step speed of every registered model in each precision, with FLOP/s and share of a
matmul peak measured in that same precision.

Scenario (per device; the thread count is torch's default, as in a user's run):

* CPU: batch 2, the default run's (32, 32, 24) patch (rounded up to the model's divisor); precisions fp32 and bf16.
* CUDA: batch 2, a Task02-sized (128, 128, 64) patch (rounded up to the divisor); precisions fp32, bf16 and fp16;
  ``torch.cuda.synchronize()`` inside every timed call.

Every model runs in the memory format ``auto`` resolves to (channels-last-3d); ``fcn`` and ``unet`` also run
contiguous, so the four columns of the "fp32 / channels-last / bf16 / channels-last + bf16" table come from one run.

A training step is the training recipe's (:mod:`segbench.training`): zero grads, forward under the precision's
autocast, Dice + BCE loss in fp32 against a fixed random mask, backward, gradient clipping at 12, Adam step.
Each test records in ``extra_info``: parameters, input shape, device, threads, precision, memory format, FLOPs of
one call (``torch.utils.flop_counter`` on the ``meta`` device for the exact shape), achieved FLOP/s (FLOPs / median
time) and its share of the best of five square matrix products measured once per session on the same device *in the
same precision* (a bf16 step is compared with a bf16 matmul) — the reference that makes figures from different
machines comparable. Both run with TF32 off (:func:`segbench.job_scope.ieee_fp32`, as every job does), so an fp32
step's share compares IEEE-fp32 convolutions with an IEEE-fp32 matmul (with cuDNN's default TF32 the share of an fp32
step could exceed 1); ``extra_info`` records both switches.

Run (the CPU table, a few minutes)::

    pytest benchmarks/test_bench_models.py -k "train_step and (fcn- or unet-)" --benchmark-only --benchmark-autosave

Compare with an earlier run: ``--benchmark-compare``. Select models with ``-k``; the MONAI models appear when
MONAI is installed.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import smoke_mode

from segbench import precision as numerics
from segbench.job_scope import ieee_fp32, tf32_flags
from segbench.profiling import count_flops, matmul_peak_flops
from segbench.registry import build_model, list_models, model_info, needs_plan
from segbench.training import segmentation_loss

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
SMOKE = smoke_mode()  # CI: tiny shapes, the bodies run once untimed (--benchmark-disable)
BATCH, PATCH = (1, (16, 16, 16)) if SMOKE else (2, (128, 128, 64)) if CUDA else (2, (32, 32, 24))
PRECISIONS = ("fp32", "bf16", "fp16") if CUDA else ("fp32", "bf16")
ROUNDS, WARMUP_ROUNDS = (10, 2) if CUDA else (5, 1)
# (model, precision, memory format): every model in the resolved format, the tutorial's two also contiguous.
# Plan-built networks (nnU-Net's) need a plan, which these benchmarks do not make.
# Smoke mode (CI) checks the other precisions on the tutorial's two only: bf16 on a CPU without bf16 units takes
# minutes per model for MONAI's larger networks.
CASES = [
    (name, p, "auto")
    for name in list_models()
    if not needs_plan(name)
    for p in (PRECISIONS if name in ("fcn", "unet") or not SMOKE else PRECISIONS[:1])
] + [(name, p, "contiguous") for name in ("fcn", "unet") for p in PRECISIONS]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class _MatmulPeaks(dict):
    """FLOP/s of a large square matrix product (best of 5) per precision, measured on first use."""

    def __missing__(self, precision: str) -> float:
        size = 256 if SMOKE else 8192 if CUDA else 1024
        self[precision] = matmul_peak_flops(DEVICE, size=size, repeats=5, dtype=_DTYPES[precision])
        return self[precision]


@pytest.fixture(scope="session", autouse=True)
def _ieee_fp32():
    """TF32 off for the whole session, as in a job: the peaks and the timed steps compute alike."""
    with ieee_fp32():
        yield


@pytest.fixture(scope="session")
def matmul_peaks(_ieee_fp32) -> dict[str, float]:
    return _MatmulPeaks()


def _input_shape(divisor: int) -> tuple[int, ...]:
    # At least 2 voxels per side at the deepest level: batch norm in training mode needs more than one value.
    return (BATCH, 1, *(divisor * max(2, math.ceil(side / divisor)) for side in PATCH))


def _flops(name: str, shape: tuple[int, ...], *, train_step: bool) -> int:
    try:
        with torch.device("meta"):
            model = build_model(name, in_channels=1, out_channels=1)
        return count_flops(model, shape, train_step=train_step)
    except (NotImplementedError, RuntimeError):  # builders or layers that cannot run on meta: count on the CPU
        return count_flops(build_model(name, in_channels=1, out_channels=1), shape, train_step=train_step)


def _record(benchmark, case: tuple[str, str, str], model: torch.nn.Module, shape, flops: int, peak: float) -> None:
    if benchmark.disabled:  # smoke mode: the body ran; there is nothing timed to record
        return
    name, precision, memory_format = case
    median = benchmark.stats.stats.median
    achieved = flops / median
    benchmark.extra_info.update(
        {
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "input_shape": list(shape),
            "device": numerics.hardware_name(DEVICE),
            "threads": torch.get_num_threads(),
            "precision": precision,
            "memory_format": numerics.resolve_memory_format(memory_format, DEVICE),
            "flops": flops,
            "achieved_flop_per_s": achieved,
            "matmul_peak_flop_per_s": peak,
            "share_of_matmul_peak": achieved / peak,
            **tf32_flags(),  # both False: fp32 steps and the fp32 peak are IEEE fp32
        }
    )


def _prepare(name: str, precision: str, memory_format: str):
    torch.manual_seed(0)
    shape = _input_shape(model_info(name).divisor)
    resolved = numerics.resolve_memory_format(memory_format, DEVICE)
    model = build_model(name, in_channels=1, out_channels=1).to(DEVICE)
    # As train() does (a job also predicts with the model train() prepared).
    numerics.prepare_model(model, precision=precision, memory_format=resolved, device=DEVICE)
    x = numerics.to_memory_format(torch.randn(shape, device=DEVICE), resolved)
    return model, x, shape


def _case_id(case: tuple[str, str, str]) -> str:
    name, precision, memory_format = case
    return f"{name}-{precision}" + ("" if memory_format == "auto" else f"-{memory_format}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forward(benchmark, matmul_peaks, case):
    name, precision, memory_format = case
    model, x, shape = _prepare(name, precision, memory_format)
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), numerics.autocast(precision, DEVICE):
            model(x)
        _sync()

    benchmark.pedantic(forward, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    _record(benchmark, case, model, shape, _flops(name, shape, train_step=False), matmul_peaks[precision])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_train_step(benchmark, matmul_peaks, case):
    name, precision, memory_format = case
    model, x, shape = _prepare(name, precision, memory_format)
    model.train()
    target = (torch.rand((shape[0], *shape[2:]), generator=torch.Generator().manual_seed(1)) > 0.7).long().to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    # fp16 on CUDA trains with loss scaling, as the training loop does; a scaler that is disabled is a no-op.
    scaler = torch.amp.GradScaler(DEVICE.type, enabled=numerics.uses_grad_scaler(precision, DEVICE))

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with numerics.autocast(precision, DEVICE):
            logits = model(x)
        scaler.scale(segmentation_loss(logits, target, kind="dice_bce")).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        _sync()

    benchmark.pedantic(train_step, rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    _record(benchmark, case, model, shape, _flops(name, shape, train_step=True), matmul_peaks[precision])
