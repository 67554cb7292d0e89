"""Building blocks shared by the tutorial-style networks (FCN, U-Net).

The tutorial's "double convolution" block puts the normalisation *before* each convolution
(norm → conv 3×3×3 → ReLU, twice); we keep that order so the tutorial's parameter counts are reproduced
exactly. Every function here returns a plain ``nn.Module`` so a printed network reads like the tutorial's code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ModelError

NORMS = ("batch", "instance")
UPSAMPLE_MODES = ("nearest", "trilinear", "transposed")


def channel_widths(width: int, depth: int) -> tuple[int, ...]:
    """Channels per resolution level: ``width`` at full resolution, doubling after each of ``depth`` poolings.

    Example: ``channel_widths(20, 2) == (20, 40, 80)`` — the tutorial's encoder.

    Raises:
        ModelError: if ``width < 1`` or ``depth < 1``.
    """
    if width < 1 or depth < 1:
        raise ModelError(f"width and depth must be at least 1 (got width={width}, depth={depth}); use e.g. unet_w20_d2")
    return tuple(width * 2**level for level in range(depth + 1))


def norm_layer(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer with ``2 * channels`` learnable parameters (scale and shift).

    ``"batch"`` is the tutorial's ``BatchNorm3d``; ``"instance"`` is ``InstanceNorm3d(affine=True)``, which
    has the same parameter count and does not depend on the batch size (useful for batch size 1).

    Raises:
        ModelError: for an unknown ``kind``.
    """
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ModelError(f"unknown norm={kind!r}; choose from: {', '.join(NORMS)}")


def double_conv(in_channels: int, mid_channels: int, out_channels: int, *, norm: str = "batch") -> nn.Sequential:
    """The tutorial's block: norm, conv 3³ (in→mid), ReLU, norm, conv 3³ (mid→out), ReLU.

    Convolutions are zero-padded by 1, so the spatial size is unchanged: (B, in, D, H, W) → (B, out, D, H, W).
    """
    return nn.Sequential(
        norm_layer(norm, in_channels),
        nn.Conv3d(in_channels, mid_channels, 3, padding=1),
        nn.ReLU(),
        norm_layer(norm, mid_channels),
        nn.Conv3d(mid_channels, out_channels, 3, padding=1),
        nn.ReLU(),
    )


def pointwise_head(in_channels: int, mid_channels: int, out_channels: int) -> nn.Sequential:
    """The tutorial's classifier: conv 1³ (in→mid), ReLU, conv 1³ (mid→out); returns logits."""
    return nn.Sequential(
        nn.Conv3d(in_channels, mid_channels, 1),
        nn.ReLU(),
        nn.Conv3d(mid_channels, out_channels, 1),
    )


class Upsample(nn.Module):
    """Upsample (B, C, D, H, W) → (B, C, f·D, f·H, f·W) by an integer factor ``f``.

    Args:
        channels: C; used only by ``"transposed"``, which learns a ``ConvTranspose3d(C, C, f, stride=f)``.
        factor: f, an integer ≥ 2.
        mode: ``"nearest"`` (the tutorial's ``F.interpolate`` default, no parameters), ``"trilinear"``
            (no parameters) or ``"transposed"`` (learned, adds ``C·C·f³ + C`` parameters).

    Raises:
        ModelError: for an unknown ``mode``.
    """

    def __init__(self, channels: int, factor: int, mode: str = "nearest") -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ModelError(f"unknown upsample={mode!r}; choose from: {', '.join(UPSAMPLE_MODES)}")
        self.factor = factor
        self.mode = mode
        self.conv = nn.ConvTranspose3d(channels, channels, factor, stride=factor) if mode == "transposed" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            return self.conv(x)
        if self.mode == "trilinear":
            return F.interpolate(x, scale_factor=self.factor, mode="trilinear", align_corners=False)
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode!r}"


class Encoder(nn.Module):
    """The contracting path shared by the FCN and U-Net families: a double conv per level, 2× max-pool between.

    Args:
        in_channels: input channels.
        widths: channels per level, e.g. ``channel_widths(20, 2) == (20, 40, 80)``.
        norm: ``"batch"`` or ``"instance"``.

    Shapes:
        (B, C_in, D, H, W) → list of per-level features, level ``l`` of shape (B, widths[l], D/2**l, H/2**l, W/2**l).
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], *, norm: str = "batch") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            double_conv(c_in, c_out, c_out, norm=norm)
            for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True)
        )
        self.pool = nn.MaxPool3d(2, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level, block in enumerate(self.blocks):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features
