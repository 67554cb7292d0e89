"""Numeric precision and memory format of training and inference: what ``auto`` means on this hardware.

``--precision auto|fp32|bf16|fp16`` and ``--memory-format auto|channels_last|contiguous`` are resolved once per job,
where the job runs (a Slurm job resolves them on its compute node), and the resolved values are recorded in
``jobs.csv`` so that two jobs are only compared when they trained with the same numerics.

* ``auto`` precision on CUDA: bf16 autocast where the GPU supports it (Ampere and newer; no GradScaler needed),
  fp16 autocast with a GradScaler otherwise.
* ``auto`` precision on CPU: bf16 autocast where the CPU has native bf16 instructions (AVX-512 BF16 or AMX, as
  reported by torch's own CPU feature probes), fp32 otherwise. Without native instructions bf16 is emulated and
  slower than fp32.
* ``auto`` memory format: channels-last-3d on CPU and CUDA. Measured on a 2-core AMD EPYC (AVX-512 BF16, torch 2.13)
  it made one U-Net training step 1.2× faster in fp32 and 1.4× faster in bf16 (``benchmarks/test_bench_training.py``
  re-measures it); cuDNN's 3D convolutions in reduced precision also prefer it.

Losses and metrics always run in fp32: :func:`segbench.training.segmentation_loss` casts the logits first.
"""

from __future__ import annotations

import contextlib
import platform
from typing import Any

import torch

__all__ = [
    "MEMORY_FORMATS",
    "PRECISIONS",
    "autocast",
    "cpu_features",
    "cpu_model",
    "hardware_name",
    "resolve_memory_format",
    "resolve_precision",
    "to_memory_format",
    "uses_grad_scaler",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
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
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def resolve_memory_format(requested: str, device: torch.device | str) -> str:  # noqa: ARG001 - same on both today
    """Resolve ``auto`` to ``"channels_last"`` (faster on every device measured so far); explicit choices pass.

    Raises:
        ValueError: ``requested`` is not one of :data:`MEMORY_FORMATS`.
    """
    if requested not in MEMORY_FORMATS:
        raise ValueError(f"--memory-format must be one of {', '.join(MEMORY_FORMATS)} (got {requested!r})")
    return "channels_last" if requested == "auto" else requested


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision (a no-op for fp32)."""
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


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
