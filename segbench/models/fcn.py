"""The tutorial's fully convolutional network (FCN) and its width/depth family ``fcn_w{W}_d{D}``.

Encoder: ``D + 1`` double-convolution blocks with ``W, 2W, …, 2**D·W`` channels, a 2×2×2 max-pool between
consecutive blocks. Decoder: one upsampling by ``2**D`` straight back to the input resolution (the
tutorial's ×4 for ``D = 2``), then a 1³ convolution head (``2**D·W → 2**(D-1)·W → out``). There are no skip
connections, which is what the tutorial's U-Net adds.

``fcn`` is ``fcn_w20_d2``: 339,303 parameters for one input and one output channel, as in the tutorial.
Input sizes must be divisible by ``2**D``; padding happens outside the model.
"""

from __future__ import annotations

import torch
from torch import nn

from segbench.models.blocks import Encoder, Upsample, channel_widths, pointwise_head
from segbench.registry import Knob, register_family, register_model

# Grid members listed by `segbench models`; any other fcn_w{W}_d{D} is built on demand by name.
DEFAULT_GRID = tuple((width, depth) for width in (10, 20, 40) for depth in (2, 3))

# The knobs compute matching (`segbench run --match`) scales and `segbench models` lists: channels at full
# resolution and number of 2x poolings (input sizes must be divisible by 2**depth).
WIDTH = Knob("width", 1, 512)
DEPTH = Knob("depth", 1, 5)


class FCN(nn.Module):
    """A 3D FCN: encoder of double convolutions and max-pools, one big upsampling, pointwise head.

    Args:
        in_channels: image channels C_in.
        out_channels: logit channels C_out (1 for binary segmentation with BCE).
        width: channels of the first block (W); level ``l`` has ``W·2**l`` channels.
        depth: number of 2× poolings (D); input sizes must be divisible by ``2**D``.
        norm: ``"batch"`` (tutorial) or ``"instance"``.
        upsample: ``"nearest"`` (tutorial), ``"trilinear"`` or ``"transposed"`` (learned, many parameters
            because it upsamples by ``2**D`` in one step).

    Shapes:
        (B, C_in, D, H, W) → (B, C_out, D, H, W) logits.

    Example:
        >>> net = FCN(in_channels=1, out_channels=1, width=20, depth=2)
        >>> sum(p.numel() for p in net.parameters())
        339303
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
        self.upsample = Upsample(widths[-1], 2**depth, upsample)
        self.head = pointwise_head(widths[-1], widths[-2], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bottom = self.encoder(x)[-1]
        return self.head(self.upsample(bottom))


@register_family("fcn", grid=DEFAULT_GRID, width=WIDTH, depth=DEPTH)
def fcn_family(
    *, in_channels: int, out_channels: int, width: int, depth: int, norm: str = "batch", upsample: str = "nearest"
) -> FCN:
    """Builder for any ``fcn_w{width}_d{depth}`` (see :class:`FCN` for the options)."""
    return FCN(
        in_channels=in_channels, out_channels=out_channels, width=width, depth=depth, norm=norm, upsample=upsample
    )


@register_model("fcn", family="fcn", divisor=4)
def fcn(*, in_channels: int, out_channels: int, norm: str = "batch", upsample: str = "nearest") -> FCN:
    """The tutorial's FCN (= ``fcn_w20_d2``): 339,303 parameters for 1 → 1 channels; sizes divisible by 4."""
    return fcn_family(
        in_channels=in_channels, out_channels=out_channels, width=20, depth=2, norm=norm, upsample=upsample
    )
