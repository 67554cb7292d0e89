"""The tutorial's 3D U-Net and its width/depth family ``unet_w{W}_d{D}``.

Encoder: exactly the FCN's (``D + 1`` double-convolution blocks with ``W, 2W, …, 2**D·W`` channels, 2×2×2
max-pools). Decoder, from the bottom up: at level ``l = D-1 … 0`` upsample ×2, concatenate the encoder's
level-``l`` features (skip connection), then a double convolution ``(2**(l+1)·W + 2**l·W) → 2**(l+1)·W →
2**l·W``. Head: 1³ convolutions ``W → W/2 → out``. For ``W = 20, D = 2`` this is the tutorial's network
(decoder blocks 120→80→40 and 60→40→20, head 20→10→1): 769,023 parameters for 1 → 1 channels.

Input sizes must be divisible by ``2**D``; padding happens outside the model.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.blocks import Encoder, Upsample, channel_widths, double_conv, pointwise_head
from segbench.registry import Knob, register_family, register_model

# Grid members listed by `segbench models`; any other unet_w{W}_d{D} is built on demand by name.
DEFAULT_GRID = tuple((width, depth) for width in (10, 20, 40) for depth in (2, 3, 4))

# The knobs compute matching (`segbench run --match`) scales and `segbench models` lists: channels at full
# resolution and number of 2x poolings (input sizes must be divisible by 2**depth).
WIDTH = Knob("width", 1, 512)
DEPTH = Knob("depth", 1, 6)


class UNet(nn.Module):
    """A 3D U-Net with the tutorial's blocks (norm before each convolution) and concatenation skips.

    Args:
        in_channels: image channels C_in.
        out_channels: logit channels C_out (1 for binary segmentation with BCE).
        width: channels at full resolution (W); level ``l`` has ``W·2**l`` channels.
        depth: number of 2× poolings (D); input sizes must be divisible by ``2**D``.
        norm: ``"batch"`` (tutorial) or ``"instance"``.
        upsample: ``"nearest"`` (tutorial), ``"trilinear"`` or ``"transposed"`` (learned 2³ transposed conv).

    Shapes:
        (B, C_in, D, H, W) → (B, C_out, D, H, W) logits.

    Example:
        >>> net = UNet(in_channels=1, out_channels=1, width=20, depth=2)
        >>> sum(p.numel() for p in net.parameters())
        769023
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        width: int = 20,
        depth: int = 2,
        norm: str = "batch",
        upsample: str = "nearest",
    ) -> None:
        super().__init__()
        widths = channel_widths(width, depth)
        self.encoder = Encoder(in_channels, widths, norm=norm)
        # decoder[i] brings level depth-i back to level depth-i-1 (bottom first, as data flows).
        levels = range(depth - 1, -1, -1)
        self.upsample = nn.ModuleList(Upsample(widths[level + 1], 2, upsample) for level in levels)
        self.decoder = nn.ModuleList(
            double_conv(widths[level + 1] + widths[level], widths[level + 1], widths[level], norm=norm)
            for level in levels
        )
        self.head = pointwise_head(width, max(1, width // 2), out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.encoder(x)
        x = skips.pop()  # the bottom level feeds the decoder directly
        for upsample, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


@register_family("unet", grid=DEFAULT_GRID, width=WIDTH, depth=DEPTH)
def unet_family(
    *, in_channels: int, out_channels: int, width: int, depth: int, norm: str = "batch", upsample: str = "nearest"
) -> UNet:
    """Builder for any ``unet_w{width}_d{depth}`` (see :class:`UNet` for the options)."""
    return UNet(
        in_channels=in_channels, out_channels=out_channels, width=width, depth=depth, norm=norm, upsample=upsample
    )


@register_model("unet", family="unet", divisor=4)
def unet(*, in_channels: int, out_channels: int, norm: str = "batch", upsample: str = "nearest") -> UNet:
    """The tutorial's U-Net (= ``unet_w20_d2``): 769,023 parameters for 1 → 1 channels; sizes divisible by 4."""
    return unet_family(
        in_channels=in_channels, out_channels=out_channels, width=20, depth=2, norm=norm, upsample=upsample
    )
