"""CUDA's autocast rules, emulated on the CPU: what dtype every op of a forward pass has on a GPU, without a GPU.

``torch.autocast("cpu")`` and ``torch.autocast("cuda")`` follow different op lists. For the tutorial networks the
difference that matters is pooling: CPU autocast runs ``max_pool3d`` in fp32 (so every encoder level below the first
starts from an fp32 copy), CUDA autocast leaves it in the input's dtype (bf16). CUDA also runs reductions and
``softmax`` in fp32, which CPU autocast leaves in bf16. A memory estimate made under CPU autocast therefore describes
a CPU step, not the GPU step it is asked about.

:func:`cuda_autocast` reproduces CUDA autocast at the level where torch itself applies it, above autograd: a
:class:`~torch.overrides.TorchFunctionMode` casts an op's floating-point tensor arguments before the op runs, so
autograd saves (and the memory tracker counts) the cast tensors, exactly as on the GPU. It works on real and on fake
(``FakeTensorMode``) CPU tensors. The op lists are CUDA's documented ones (torch's "Autocast Op Reference"):

* lower precision: matrix products and convolutions (:data:`LOWER_PRECISION_OPS`), inputs cast to the autocast dtype;
  casts of fp32 leaf tensors that require grad (weights) are cached for the duration of the context, as CUDA
  autocast caches them;
* fp32 (:data:`FP32_OPS`): pointwise transcendental functions, norms other than batch/instance norm, losses,
  ``softmax``, ``sum``, ``prod``, cumulative sums;
* promote (:data:`PROMOTE_OPS`): ops of several tensors (``cat``, ``stack``, ``addcmul`` …) run in the widest input
  dtype;
* everything else runs in its input's dtype.

``benchmarks/gpu_check.py`` compares every op's output dtype under this emulation with real CUDA autocast on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

__all__ = ["FP32_OPS", "LOWER_PRECISION_OPS", "PROMOTE_OPS", "cuda_autocast", "op_dtypes"]

LOWER_PRECISION_OPS = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv_tbc",
    "convolution", "_convolution", "linear", "matmul", "__matmul__", "__rmatmul__", "mm", "mv", "bmm", "addmm",
    "addmv", "addr", "addbmm", "baddbmm", "chain_matmul", "multi_dot", "linalg_multi_dot", "prelu",
    "scaled_dot_product_attention", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
})  # fmt: skip
FP32_OPS = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow", "__pow__", "__rpow__", "__rdiv__", "__rtruediv__", "softplus", "layer_norm", "group_norm", "norm",
    "normalize", "frobenius_norm", "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss",
    "nll_loss", "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
    "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "cross_entropy", "dist", "pdist", "cdist", "renorm", "logsumexp", "softmax",
    "log_softmax", "softmin", "cumsum", "cumprod", "prod", "sum",
})  # fmt: skip
PROMOTE_OPS = frozenset({
    "addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sample", "index_put", "scatter_add",
    "tensordot", "cat", "concat", "concatenate", "stack", "index_copy",
})  # fmt: skip


class cuda_autocast(TorchFunctionMode):  # noqa: N801 - used like torch.autocast, a context manager
    """``with cuda_autocast(torch.bfloat16):`` runs the enclosed CPU ops with CUDA autocast's dtypes.

    Use it *instead of* ``torch.autocast("cpu")`` (not inside it). Backward passes run outside it, as with autocast.

    Args:
        dtype: the lower-precision dtype (``torch.bfloat16`` or ``torch.float16``).
        record: if given, called with ``(op name, output dtype)`` for every tensor-returning op (see :func:`op_dtypes`).
    """

    def __init__(self, dtype: torch.dtype, record: Callable[[str, torch.dtype], None] | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.record = record
        self._weight_casts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __exit__(self, *exc: Any) -> None:
        self._weight_casts.clear()  # autocast drops its cached weight casts when the outermost context ends
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in LOWER_PRECISION_OPS:
            args, kwargs = tree_map(lambda t: self._cast(t, self.dtype), (args, kwargs))
        elif name in FP32_OPS:
            args, kwargs = tree_map(lambda t: self._cast(t, torch.float32), (args, kwargs))
        elif name in PROMOTE_OPS:
            widest = _widest(args, kwargs, self.dtype)
            if widest is not None:
                args, kwargs = tree_map(lambda t: self._cast(t, widest), (args, kwargs))
        out = func(*args, **kwargs)
        if self.record is not None and isinstance(out, torch.Tensor) and name not in ("__get__", "__set__"):
            self.record(name, out.dtype)
        return out

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        if not _eligible(value) or value.dtype == dtype:
            return value
        if dtype == self.dtype and value.dtype == torch.float32 and value.is_leaf and value.requires_grad:
            key = id(value)
            cached = self._weight_casts.get(key)
            if cached is None or cached[0] is not value:
                cached = (value, value.to(dtype))
                self._weight_casts[key] = cached
            return cached[1]
        return value.to(dtype)


def _eligible(value: Any) -> bool:
    # CUDA autocast casts floating-point tensors and leaves float64 alone.
    return isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64


def _widest(args: Any, kwargs: Any, lower: torch.dtype) -> torch.dtype | None:
    found: list[torch.dtype] = []
    tree_map(lambda t: found.append(t.dtype) if _eligible(t) else None, (args, kwargs))
    if not found:
        return None
    return torch.float32 if torch.float32 in found else lower


def op_dtypes(
    run: Callable[[], Any], *, rules: str, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> list[tuple[str, str]]:
    """``(op name, output dtype)`` of every tensor-returning op of ``run()`` under autocast ``rules``.

    Args:
        run: a forward pass on tensors on ``device`` (e.g. ``lambda: model(x)``).
        rules: ``"cpu"`` or ``"cuda"``: real ``torch.autocast`` when it is ``device``'s type, the emulation
            (:class:`cuda_autocast`) for ``"cuda"`` on the CPU.
        dtype: the autocast dtype.
        device: where ``run`` computes.

    Returns:
        The ops in call order, e.g. ``[("batch_norm", "torch.float32"), ("conv3d", "torch.bfloat16"), ...]``.

    Raises:
        ValueError: rules that are neither ``device``'s own nor ``"cuda"`` on the CPU.
    """
    seen: list[tuple[str, str]] = []

    def record(name: str, out: torch.dtype) -> None:
        seen.append((name, str(out)))

    device_type = torch.device(device).type
    if rules == device_type:
        with _Recorder(record), torch.autocast(device_type, dtype=dtype):
            run()
    elif rules == "cuda" and device_type == "cpu":
        with cuda_autocast(dtype, record=record):
            run()
    else:
        raise ValueError(f"cannot apply {rules!r} autocast rules on a {device_type} device")
    return seen


class _Recorder(TorchFunctionMode):
    """Records op outputs' dtypes without changing anything (real CPU autocast does the casting below it)."""

    def __init__(self, record: Callable[[str, torch.dtype], None]) -> None:
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, torch.Tensor) and name not in ("__get__", "__set__"):
            self.record(name, out.dtype)
        return out
