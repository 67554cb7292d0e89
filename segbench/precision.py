"""Numeric precision and memory format of training and inference: what ``auto`` means on this hardware.

``--precision auto|fp32|bf16|fp16`` and ``--memory-format auto|channels_last|contiguous`` are resolved once per job,
where the job runs (a Slurm job resolves them on its compute node), and the resolved values are recorded in
``jobs.csv`` so that two jobs are only compared when they trained with the same numerics.

* ``auto`` precision on CUDA: bf16 autocast where the job's GPU computes it natively (compute capability 8.0, Ampere,
  and newer; no GradScaler needed), fp16 autocast with a GradScaler otherwise (Volta, Turing emulate bf16).
* ``auto`` precision on CPU: bf16 autocast where the CPU has native bf16 instructions (AVX-512 BF16 or AMX, as
  reported by torch's own CPU feature probes), fp32 otherwise. Without native instructions bf16 is emulated and
  slower than fp32.
* ``auto`` memory format: channels-last-3d on CPU and CUDA. Measured on a 2-core AMD EPYC (AVX-512 BF16, torch 2.13)
  it made one U-Net training step 1.2× faster in fp32 and 1.4× faster in bf16 (``benchmarks/test_bench_training.py``
  re-measures it); cuDNN's 3D convolutions in reduced precision also prefer it.

Losses and metrics always run in fp32: :func:`segbench.training.segmentation_loss` casts the logits first.

A known kernel defect is worked around: torch's CPU bf16 3D convolution (oneDNN, seen with torch 2.13 on AVX-512
BF16) returns a wrong *weight gradient* — values up to 1e37, then NaN — when the input's depth is larger than 1 but
smaller than the kernel (depth 2 under a 3³ kernel: the bottleneck of a 4-level U-Net on 32³ patches). The forward
pass and the input gradient are right, so the loss looks fine until the weights are destroyed.
:func:`guard_small_convolutions` runs such convolutions in fp32; they are the coarsest, cheapest layers.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from typing import Any

import torch

from segbench.config import MEMORY_FORMATS, PRECISIONS  # the names; kept in config, which never imports torch

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "autocast",
    "cpu_features",
    "cpu_model",
    "cuda_has_native_bf16",
    "guard_small_convolutions",
    "hardware_name",
    "prepare_model",
    "resolve_memory_format",
    "resolve_precision",
    "to_memory_format",
    "uses_grad_scaler",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_features() -> dict[str, Any]:
    """The CPU's vector instruction sets as torch sees them (they decide which kernels run, hence the results).

    Returns:
        ``{"capability": "AVX512", "avx512_bf16": True, "amx": False, ...}``; probes this torch lacks are omitted.
    """
    features: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability()}
    for name, probe in (
        ("avx2", "_is_avx2_supported"),
        ("avx512", "_is_avx512_supported"),
        ("avx512_vnni", "_is_vnni_supported"),
        ("avx512_bf16", "_is_avx512_bf16_supported"),
        ("amx", "_is_amx_tile_supported"),
    ):
        function = getattr(torch.cpu, probe, None)
        if function is not None:
            features[name] = bool(function())
    return features


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 natively (AVX-512 BF16 or AMX tiles)."""
    features = cpu_features()
    return bool(features.get("avx512_bf16") or features.get("amx"))


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """Resolve ``auto`` for ``device``; explicit choices pass through unchanged.

    Args:
        requested: one of :data:`PRECISIONS`.
        device: where the job trains.

    Returns:
        ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    Raises:
        ValueError: ``requested`` is not one of :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def cuda_has_native_bf16(device: torch.device | str = "cuda") -> bool:
    """Whether GPU ``device`` (not the current one) computes bf16 natively: compute capability 8.0 (Ampere) or newer.

    ``torch.cuda.is_bf16_supported()`` is not the test: it asks the *current* device, and by default it also answers
    True on older GPUs where bf16 only runs emulated (Volta, Turing: slower than fp16 and than fp32 on tensor cores).
    ROCm GPUs that torch runs on all have bf16.
    """
    if torch.version.hip:
        return True
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def resolve_memory_format(requested: str, device: torch.device | str) -> str:  # noqa: ARG001 - same on both today
    """Resolve ``auto`` to ``"channels_last"`` (faster on every device measured so far); explicit choices pass.

    Raises:
        ValueError: ``requested`` is not one of :data:`MEMORY_FORMATS`.
    """
    if requested not in MEMORY_FORMATS:
        raise ValueError(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)} (got {requested!r})")
    return "channels_last" if requested == "auto" else requested


def autocast(
    precision: str, device: torch.device | str, *, rules: str | None = None
) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32).

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the tensors are.
        rules: whose autocast op lists apply, ``"cpu"`` or ``"cuda"``; ``None``: the device's own. ``"cuda"`` on a CPU
            device emulates CUDA autocast (:func:`segbench.cuda_autocast.cuda_autocast`): what a GPU step computes in
            which dtype, on a machine without one.

    Raises:
        ValueError: ``rules`` other than the device's own, except ``"cuda"`` on the CPU.
    """
    device = torch.device(device)
    rules = rules or device.type
    if precision == "fp32":
        return contextlib.nullcontext()
    if rules == device.type:
        return torch.autocast(device.type, dtype=_DTYPES[precision])
    if rules == "cuda" and device.type == "cpu":
        from segbench.cuda_autocast import cuda_autocast

        return cuda_autocast(_DTYPES[precision])
    raise ValueError(f"cannot apply {rules} autocast rules on a {device.type} device")


def prepare_model(
    model: torch.nn.Module, *, precision: str, memory_format: str, device: torch.device | str
) -> torch.nn.Module:
    """Put ``model`` (already on ``device``) into the resolved numerics, in place: the memory format, and for bf16 on
    CPU the small-convolution guard. Parameters keep their identity, so an optimizer built before still holds them.

    The one place a model is readied for training (``segbench.training.train``) and for the benchmarks that time
    what training runs. Returns ``model``.
    """
    to_memory_format(model, memory_format)
    guard_small_convolutions(model, precision, device)
    return model


def guard_small_convolutions(model: torch.nn.Module, precision: str, device: torch.device | str) -> int:
    """Make every ``Conv3d`` of ``model`` compute in fp32 when its input is smaller than its kernel, for bf16 on CPU.

    Works around the CPU bf16 weight-gradient defect described in the module docstring. The condition is checked
    per call on the input's spatial size ``(D, H, W)`` against ``kernel_size``, so the same model runs its large
    layers in bf16 and only the tiny ones in fp32. Installed in place (an instance-level ``forward`` that survives
    ``copy.deepcopy`` and ``torch.save``); parameters, state dict and outputs' meaning are unchanged. A ``Conv3d``
    that already has an instance-level ``forward`` of its own is left alone. A no-op for other precisions and
    devices.

    Returns:
        The number of ``Conv3d`` layers that carry the guard (0 when none is needed: not bf16, or not on CPU).
    """
    if precision != "bf16" or torch.device(device).type != "cpu":
        return 0
    guarded = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d) and "forward" not in vars(module):  # idempotent: guarded only once
            # A partial of a module-level function: survives copy.deepcopy and pickling (torch.save of the module).
            module.forward = functools.partial(_conv_fp32_when_smaller_than_kernel, module)
        guarded += isinstance(module, torch.nn.Conv3d) and _is_guarded(module)
    return guarded


def _is_guarded(conv: torch.nn.Conv3d) -> bool:
    forward = vars(conv).get("forward")
    return isinstance(forward, functools.partial) and forward.func is _conv_fp32_when_smaller_than_kernel


def _conv_fp32_when_smaller_than_kernel(self: torch.nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and any(size < k for size, k in zip(x.shape[-3:], self.kernel_size, strict=True)):
        with torch.autocast("cpu", enabled=False):
            return type(self).forward(self, x.float())
    return type(self).forward(self, x)


def uses_grad_scaler(precision: str, device: torch.device | str) -> bool:
    """fp16 on CUDA needs loss scaling against gradient underflow; bf16 has fp32's exponent range and does not."""
    return precision == "fp16" and torch.device(device).type == "cuda"


def to_memory_format(tensor_or_module: Any, memory_format: str) -> Any:
    """Move a 5-D tensor or a module to the resolved memory format (contiguous leaves it as it is)."""
    if memory_format != "channels_last":
        return tensor_or_module
    if isinstance(tensor_or_module, torch.Tensor):
        return tensor_or_module.contiguous(memory_format=torch.channels_last_3d)
    return tensor_or_module.to(memory_format=torch.channels_last_3d)


def hardware_name(device: torch.device | str) -> str:
    """What a job ran on, for ``jobs.csv``: the GPU's name, or the CPU model with its torch kernel capability."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({cpu_features()['capability']})"


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``; ``platform.processor()`` is often just ``x86_64`` on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
