"""nnU-Net's VRAM proxy: the summed size of every convolution output of its U-Nets, by arithmetic on the topology.

nnU-Net does not measure memory when it plans. It builds the network and counts the elements of every convolution's
output feature map for one sample (``compute_conv_feature_map_size`` of dynamic-network-architectures), then compares
that count with a hand-tuned reference value (560 million for the plain U-Net at 8 GB). The functions here count the
same elements from the topology alone, so segbench plans without building (or installing) the networks.

Counts are elements (not bytes) for batch size 1; sizes are per axis, in voxels, in the plan's axis order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def stage_sizes(patch_size: Sequence[int], strides: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Feature-map size of every encoder stage: the patch floor-divided by the strides so far (stage 0 included)."""
    sizes, size = [], tuple(int(s) for s in patch_size)
    for stride in strides:
        size = tuple(s // k for s, k in zip(size, stride, strict=True))
        sizes.append(size)
    return sizes


def plain_unet_feature_map_size(
    patch_size: Sequence[int],
    *,
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    n_conv_per_stage: Sequence[int],
    n_conv_per_stage_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """Elements of all convolution outputs of nnU-Net's ``PlainConvUNet`` for one sample of ``patch_size``.

    Args:
        patch_size: voxels per axis.
        features, strides, n_conv_per_stage: per encoder stage, as in the plans file's ``arch_kwargs``.
        n_conv_per_stage_decoder: per decoder stage, deepest first (one fewer than the encoder stages).
        num_classes: output channels (nnU-Net plans with the number of declared labels, background included).
        deep_supervision: count a segmentation output at every decoder stage (nnU-Net plans without).
    """
    sizes = stage_sizes(patch_size, strides)
    encoder = sum(n * f * math.prod(size) for n, f, size in zip(n_conv_per_stage, features, sizes, strict=True))
    return encoder + _decoder_feature_map_size(sizes, features, n_conv_per_stage_decoder, num_classes, deep_supervision)


def resenc_unet_feature_map_size(
    patch_size: Sequence[int],
    *,
    features: Sequence[int],
    strides: Sequence[Sequence[int]],
    n_blocks_per_stage: Sequence[int],
    n_conv_per_stage_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool = False,
) -> int:
    """Elements of all convolution outputs of nnU-Net's ``ResidualEncoderUNet`` (basic residual blocks, default stem).

    The stem is one convolution to ``features[0]`` at full size. A residual block has two convolutions; the first
    block of a stage also has a 1×1 projection on its shortcut when it changes the channel count or the size.
    Arguments as :func:`plain_unet_feature_map_size`, with ``n_blocks_per_stage`` for the encoder.
    """
    sizes = stage_sizes(patch_size, strides)
    total = features[0] * math.prod(int(s) for s in patch_size)  # the stem
    in_channels, in_size = features[0], tuple(int(s) for s in patch_size)
    for blocks, f, size in zip(n_blocks_per_stage, features, sizes, strict=True):
        voxels = math.prod(size)
        total += 2 * blocks * f * voxels
        if in_channels != f or in_size != size:
            total += f * voxels  # the first block's projection shortcut
        in_channels, in_size = f, size
    return total + _decoder_feature_map_size(sizes, features, n_conv_per_stage_decoder, num_classes, deep_supervision)


def _decoder_feature_map_size(
    sizes: list[tuple[int, ...]],
    features: Sequence[int],
    n_conv_decoder: Sequence[int],
    num_classes: int,
    deep_supervision: bool,
) -> int:
    # Decoder stage s (deepest first) works at the size of encoder stage n-2-s with that stage's features: a
    # transposed convolution, its convolutions, and the 1x1 segmentation head (only the last one without deep
    # supervision).
    n_decoder = len(sizes) - 1
    total = 0
    for s in range(n_decoder):
        stage = n_decoder - 1 - s
        voxels = math.prod(sizes[stage])
        total += (n_conv_decoder[s] + 1) * features[stage] * voxels
        if deep_supervision or s == n_decoder - 1:
            total += num_classes * voxels
    return total
