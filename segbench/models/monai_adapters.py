"""MONAI networks as ``monai_*`` models (optional: listed only when MONAI is installed).

Importing this module never imports MONAI (a slow import, and an optional dependency): availability is
checked with :func:`importlib.util.find_spec` and each builder imports ``monai.networks.nets`` when called.
Each builder passes segbench's defaults below to the MONAI constructor; any keyword option overrides them
(e.g. ``build_model("monai_unet", in_channels=1, out_channels=1, channels=(8, 16, 32, 64, 128))``).
Overriding the number of down-sampling stages changes the input-size divisor, which stays the registered one.

Included: MONAI ``UNet`` (``monai_unet``), ``BasicUNet`` (``monai_basicunet``), ``SegResNet``
(``monai_segresnet``), ``DynUNet`` with an nnU-Net-like 5-level layout (``monai_dynunet``) and ``SwinUNETR``
(``monai_swinunetr``; since MONAI 1.5 it needs no fixed image size, only sizes divisible by 32; it is
registered only when ``einops`` is installed too, which MONAI's Swin transformer needs).

Left out: ``UNETR``, whose position embeddings fix the input size at construction (``img_size``), so it does
not fit a registry whose builders are independent of the patch size; a plugin can register a ``UNETR`` for
one patch size (``segbench_divisor`` equal to that size).
"""

from __future__ import annotations

import importlib.util
import logging

from torch import nn

from segbench.registry import declare_unavailable, register_model

logger = logging.getLogger(__name__)


def module_installed(module: str) -> bool:
    """True if ``module`` can be imported, decided without importing it (a broken install counts as absent)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def monai_available() -> bool:
    """True if ``monai`` can be imported, decided without importing it."""
    return module_installed("monai")


def _nets():
    import monai.networks.nets as nets  # imported lazily: optional and slow

    return nets


def monai_unet(*, in_channels: int, out_channels: int, **options) -> nn.Module:
    """MONAI ``UNet``, 5 levels (16–256 channels), 2 residual units per level; sizes divisible by 16."""
    defaults = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}
    return _nets().UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **(defaults | options))


def monai_basicunet(*, in_channels: int, out_channels: int, **options) -> nn.Module:
    """MONAI ``BasicUNet`` with its default features (32, 32, 64, 128, 256, 32); sizes divisible by 16."""
    return _nets().BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **options)


def monai_segresnet(*, in_channels: int, out_channels: int, **options) -> nn.Module:
    """MONAI ``SegResNet`` with its defaults (8 initial filters, blocks (1, 2, 2, 4)); sizes divisible by 8."""
    return _nets().SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **options)


def monai_dynunet(*, in_channels: int, out_channels: int, **options) -> nn.Module:
    """MONAI ``DynUNet``: 3³ kernels, 5 levels (strides 1, 2, 2, 2, 2), no deep supervision; sizes divisible by 16."""
    defaults = {
        "kernel_size": (3, 3, 3, 3, 3),
        "strides": (1, 2, 2, 2, 2),
        "upsample_kernel_size": (2, 2, 2, 2),
        "deep_supervision": False,
    }
    return _nets().DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **(defaults | options))


def monai_swinunetr(*, in_channels: int, out_channels: int, **options) -> nn.Module:
    """MONAI ``SwinUNETR`` (feature size 24, window 7); sizes divisible by 32, and at least 64 on one axis.

    Raises (on a forward of a 32×32×32 input): ValueError saying which patch to use instead.
    """
    model = _nets().SwinUNETR(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, **options)
    model.register_forward_pre_hook(_refuse_one_voxel_bottleneck)
    return model


def _refuse_one_voxel_bottleneck(module: nn.Module, args: tuple) -> None:
    # SwinUNETR's deepest level is the input / 32 and is instance-normalised without running statistics: torch
    # refuses one voxel (in eval mode too), with an error that names neither the model nor the patch.
    spatial = tuple(args[0].shape[2:])
    if all(side <= 32 for side in spatial):
        raise ValueError(
            f"monai_swinunetr cannot run on a {'x'.join(map(str, spatial))} patch: its deepest level (1/32 of the "
            "patch) would be one voxel, which instance norm cannot normalise; use a patch with at least one side "
            "of 64, e.g. --patch 64,64,64"
        )


# name → (builder, family, divisor, modules it needs besides monai: MONAI imports some optional ones lazily)
MONAI_MODELS = {
    "monai_unet": (monai_unet, "unet", 16, ()),
    "monai_basicunet": (monai_basicunet, "unet", 16, ()),
    "monai_segresnet": (monai_segresnet, "segresnet", 8, ()),
    "monai_dynunet": (monai_dynunet, "unet", 16, ()),
    "monai_swinunetr": (monai_swinunetr, "swinunetr", 32, ("einops",)),
}


def register_monai_models() -> list[str]:
    """Register the ``monai_*`` models whose requirements are installed; returns their names (empty without MONAI)."""
    if not monai_available():
        logger.debug("monai is not installed: monai_* models are not registered")
        for name in MONAI_MODELS:
            declare_unavailable(name, reason="needs MONAI, which is not installed: pip install 'segbench[monai]'")
        return []
    registered = []
    for name, (builder, family, divisor, needs) in MONAI_MODELS.items():
        missing = [module for module in needs if not module_installed(module)]
        if missing:
            logger.debug("%s is not registered: it needs %s", name, ", ".join(missing))
            declare_unavailable(name, reason=f"needs {', '.join(missing)}, which is not installed: pip install "
                                f"{' '.join(missing)}")  # fmt: skip
            continue
        register_model(name, family=family, divisor=divisor, source="monai")(builder)
        registered.append(name)
    return registered
