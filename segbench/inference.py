"""Sliding-window prediction of whole volumes with Gaussian blending and optional mirroring.

A model trained on patches is applied to overlapping windows of the patch size; each window's logits are
weighted by a Gaussian that favours the window centre (where the network saw the most context) and the
weighted sum is divided by the summed weights. Windows are spread evenly over each axis, the first flush
with the start and the last flush with the end, with at least the requested overlap between neighbours.

The patch size must be divisible by the model's declared divisor (e.g. 2**poolings for a U-Net); the
caller ensures that, since only the caller knows the model's requirements. Images smaller than the patch
along an axis are padded with zeros (the mean after z-score normalisation) centred on the image, and the
padding is cropped off the result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from segbench import precision as numerics
from segbench.errors import ConfigError, ModelError

# Floor of the un-normalised Gaussian: a window's border voxels are the only cover of the volume's corners,
# and dividing by weights near zero would amplify rounding error there. The same floor as MONAI's
# compute_importance_map, so blended results agree with its sliding_window_inference (see benchmarks/).
_GAUSSIAN_FLOOR = 1e-3


def gaussian_importance_map(patch_size: tuple[int, int, int], *, sigma_scale: float = 0.125) -> torch.Tensor:
    """Separable Gaussian weights over a patch, peak 1 at the patch centre.

    Args:
        patch_size: ``(D, H, W)`` in voxels.
        sigma_scale: standard deviation per axis as a fraction of that axis' patch length.

    Returns:
        float32 tensor ``(D, H, W)`` with maximum 1 and every value ``>= 1e-3`` (strictly positive).

    Raises:
        ConfigError: a patch length is not a positive integer, or ``sigma_scale <= 0``.
    """
    patch_size = _check_patch_size(patch_size)
    if not sigma_scale > 0:
        raise ConfigError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = torch.ones((), dtype=torch.float64)
    for axis, length in enumerate(patch_size):
        # Centre (length - 1) / 2: symmetric, so a flipped window gets the same weights (mirroring stays exact).
        offsets = torch.arange(length, dtype=torch.float64) - (length - 1) / 2
        profile = torch.exp(-0.5 * (offsets / (sigma_scale * length)) ** 2)
        weights = weights.unsqueeze(-1) * profile.view((1,) * axis + (length,))
    weights = weights.clamp(min=_GAUSSIAN_FLOOR)
    return (weights / weights.max()).to(torch.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``patch`` covering ``[0, size)`` along one axis.

    ``n = ceil((size - patch) / (patch * (1 - overlap))) + 1`` windows spread evenly, first at 0 and last at
    ``size - patch``, so neighbours overlap by at least ``overlap * patch`` less one voxel of rounding (at
    most one window per integer offset). ``size <= patch`` gives ``[0]``.

    Raises:
        ConfigError: ``overlap`` outside ``[0, 1)``.
    """
    if not 0 <= overlap < 1:
        raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * (1 - overlap))) + 1
    # More windows than distinct integer offsets (very high overlap) would only repeat work.
    n = min(n, size - patch + 1)
    step = (size - patch) / (n - 1)
    return [math.floor(i * step + 0.5) for i in range(n)]


def sliding_window_predict(
    model: nn.Module,
    image: torch.Tensor,
    *,
    patch_size: tuple[int, int, int],
    overlap: float = 0.5,
    batch_size: int = 4,
    mirror: bool = False,
    gaussian: bool = True,
    sigma_scale: float = 0.125,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    memory_format: str = "contiguous",
    progress: bool = False,
) -> torch.Tensor:
    """Predict logits for a whole volume by blending overlapping windows.

    Args:
        model: maps ``(B, C, *patch_size)`` to logits ``(B, K, *patch_size)``; must already be on ``device``
            and accept ``patch_size`` (divisible by its divisor: the caller's responsibility). Put in eval
            mode for the call; its previous mode is restored afterwards.
        image: ``(C, D, H, W)`` float tensor (or array) on the CPU, intensity-normalised.
        patch_size: window size ``(pd, ph, pw)`` in voxels.
        overlap: minimum overlap of neighbouring windows as a fraction of the patch, in ``[0, 1)``.
        batch_size: windows per forward pass.
        mirror: test-time augmentation: average the logits over the 8 flip combinations of the 3 spatial
            axes (8× the compute).
        gaussian: weight each window by :func:`gaussian_importance_map`; ``False`` gives a plain average.
        sigma_scale: Gaussian standard deviation as a fraction of the patch length.
        device: where windows are run and logits are accumulated.
        precision: resolved precision of the forward passes, as in training (:mod:`segbench.precision`):
            ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast; logits are accumulated in fp32 either way.
        memory_format: ``"channels_last"`` feeds the windows in channels-last-3d (the model should already be in
            it, as training leaves it), ``"contiguous"`` as they are.
        progress: show a tqdm bar over batches on stderr.

    Returns:
        float32 logits ``(K, D, H, W)`` on the CPU, same spatial shape as ``image``.

    Raises:
        ValueError: ``image`` is not 4-D, or ``precision`` is not one of fp32, bf16, fp16.
        ConfigError: bad ``patch_size``, ``overlap`` or ``batch_size``.
        ModelError: the model's output is not ``(B, K, *patch_size)``.
    """
    image, patch_size = _check_inputs(image, patch_size, batch_size, precision)
    device = torch.device(device)
    padded, crop = _pad_to_patch(image.to(torch.float32), patch_size)
    corners = window_corners(padded.shape[1:], patch_size, overlap)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            padded = padded.to(device)
            weight = gaussian_importance_map(patch_size, sigma_scale=sigma_scale) if gaussian else None
            logits = _blend_windows(model, padded, _batches(corners, batch_size, progress), patch_size, weight=weight,
                                    mirror=mirror, precision=precision, memory_format=memory_format)  # fmt: skip
            return logits[(slice(None), *crop)].to("cpu", torch.float32).contiguous()
    finally:
        model.train(was_training)


def window_corners(shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Start corners of every window over a (padded) image of spatial ``shape``: the product of
    :func:`window_starts` per axis."""
    starts = [window_starts(s, p, overlap) for s, p in zip(shape, patch_size, strict=True)]
    return list(itertools.product(*starts))


def _check_inputs(image, patch_size, batch_size, precision: str) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The image as a tensor and the patch as 3 ints, or the error :func:`sliding_window_predict` documents."""
    image = torch.as_tensor(image)
    if image.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got shape {tuple(image.shape)}")
    patch_size = _check_patch_size(patch_size)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be a resolved one (fp32, bf16 or fp16), got {precision!r}")
    return image, patch_size


def _blend_windows(
    model: nn.Module,
    padded: torch.Tensor,
    batches: Iterator[list[tuple[int, ...]]],
    patch_size: tuple[int, int, int],
    *,
    weight: torch.Tensor | None,
    mirror: bool,
    precision: str,
    memory_format: str,
) -> torch.Tensor:
    """Run the windows at ``batches``' corners over ``padded`` ``(C, D, H, W)`` (on the device) and return the
    ``weight``-weighted (``None``: plain) average of their logits, ``(K, D, H, W)`` float32 on the same device.

    Raises:
        ModelError: the model's output is not ``(B, K, *patch_size)``.
    """
    device = padded.device
    weight = (torch.ones(patch_size) if weight is None else weight).to(device)
    weight_sum = torch.zeros(padded.shape[1:], device=device)
    logits = None
    for batch in batches:
        windows = [_window(c, patch_size) for c in batch]
        x = numerics.to_memory_format(torch.stack([padded[(slice(None), *w)] for w in windows]), memory_format)
        with numerics.autocast(precision, device):
            pred = _forward(model, x, mirror)
        if pred.ndim != 5 or pred.shape[0] != len(batch) or tuple(pred.shape[2:]) != patch_size:
            raise ModelError(
                f"{type(model).__name__} returned shape {tuple(pred.shape)} for input {tuple(x.shape)}; "
                "models must return logits (B, K) + the input's spatial size"
            )
        if logits is None:
            logits = torch.zeros((pred.shape[1], *padded.shape[1:]), device=device)
        for w, p in zip(windows, pred, strict=True):
            # addcmul_ fuses weighting and accumulation: no temporary, the model's output untouched.
            logits[(slice(None), *w)].addcmul_(p, weight)
            weight_sum[w] += weight
    assert logits is not None  # at least one window always exists
    logits /= weight_sum
    return logits


def logits_to_labels(logits: torch.Tensor) -> np.ndarray:
    """Turn logits into a label map.

    Args:
        logits: ``(K, D, H, W)``. ``K == 1``: one foreground channel, label 1 where sigmoid > 0.5 (logit > 0).
            ``K > 1``: label = argmax over channels (channel 0 = background).

    Returns:
        uint8 array ``(D, H, W)``.

    Raises:
        ValueError: ``logits`` is not 4-D or has more than 256 channels.
    """
    logits = torch.as_tensor(logits)
    if logits.ndim != 4 or not 1 <= logits.shape[0] <= 256:
        raise ValueError(f"logits must be (K, D, H, W) with 1 <= K <= 256, got shape {tuple(logits.shape)}")
    labels = logits[0] > 0 if logits.shape[0] == 1 else logits.argmax(dim=0)
    return labels.to(torch.uint8).cpu().numpy()


def _check_patch_size(patch_size: Sequence[int]) -> tuple[int, int, int]:
    patch = tuple(patch_size)
    if len(patch) != 3 or not all(isinstance(p, int | np.integer) and p > 0 for p in patch):
        raise ConfigError(f"--patch must be 3 positive integers (D H W), got {patch_size!r}")
    return tuple(int(p) for p in patch)  # type: ignore[return-value]


def _pad_to_patch(image: torch.Tensor, patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad ``(C, D, H, W)`` centred up to at least ``patch_size``; return it and the crop that undoes it."""
    before = [max(p - s, 0) // 2 for s, p in zip(image.shape[1:], patch_size, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(image.shape[1:], patch_size, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, image.shape[1:], strict=True))
    if not any(before) and not any(after):
        return image, crop
    # F.pad takes (last axis first) pairs.
    pads = [n for b, a in zip(reversed(before), reversed(after), strict=True) for n in (b, a)]
    return torch.nn.functional.pad(image, pads, mode="constant", value=0.0), crop


def _window(corner: tuple[int, ...], patch_size: tuple[int, int, int]) -> tuple[slice, ...]:
    return tuple(slice(c, c + p) for c, p in zip(corner, patch_size, strict=True))


def _batches(corners: list[tuple[int, ...]], batch_size: int, progress: bool) -> Iterator[list[tuple[int, ...]]]:
    chunks = [corners[i : i + batch_size] for i in range(0, len(corners), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sliding window", unit="batch", leave=False, disable=None)  # no bar off a TTY
    yield from chunks


def _forward(model: nn.Module, x: torch.Tensor, mirror: bool) -> torch.Tensor:
    if not mirror:
        return _call(model, x)
    total = None
    # All 8 subsets of the spatial axes (2, 3, 4), the empty subset being the unflipped input.
    for k in range(4):
        for axes in itertools.combinations((2, 3, 4), k):
            out = torch.flip(_call(model, torch.flip(x, axes)), axes) if axes else _call(model, x)
            total = out if total is None else total + out
    return total / 8


def _call(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor):
        # e.g. deep-supervision models returning a list: the caller must unwrap them for inference.
        raise ModelError(f"{type(model).__name__} returned {type(out).__name__}; inference needs one logits tensor")
    # float32 accumulation: float16 sums of 8 mirrors or many windows lose precision.
    return out.float()
