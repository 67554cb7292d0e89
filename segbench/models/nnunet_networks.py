"""nnU-Net's own networks, built by dynamic-network-architectures from a plan (optional: ``segbench[nnunet]``).

* ``nnunet_plain``: ``PlainConvUNet``, the network of nnU-Net's default plans (``nnUNetPlans``, preset ``nnunet``);
* ``nnunet_resenc_m``, ``nnunet_resenc_l``, ``nnunet_resenc_xl``: ``ResidualEncoderUNet``, the networks of the ResEnc
  presets (``nnUNetResEncUNet{M,L,XL}Plans``, presets ``resenc-m``/``-l``/``-xl``).

They need a plan (:class:`~segbench.plans.network.NetworkPlan`): stages, features, kernels and strides follow from
the patch and spacing. The builder takes the plan's ``architecture`` entry when it names the network's class, else
derives the entry the network's preset writes at the plan's patch and spacing
(:func:`~segbench.plans.network.network_architecture_for`); it then does what nnU-Net's ``get_network_from_plans``
does: import the classes the entry names, construct the network with the image channels and classes, and apply the
network's own initialisation (He, negative slope 1e-2; ResEnc also zeroes the last norm of each residual block).
ResEnc M, L and XL differ only in the patch their planners choose: at one patch they are the same network.

Deep supervision (``deep_supervision=True``): in training mode the forward pass returns a list of logits, one per
decoder stage, full resolution first (dynamic-network-architectures' convention); in eval mode a single tensor. For
an input (B, C_in, D, H, W) and the plan's per-stage ``strides`` s_0 (all ones), s_1, …, s_{n-1}, entry ``k`` of the
list is (B, C_out, D / p_k[0], H / p_k[1], W / p_k[2]) with p_k the per-axis product of s_0 … s_k; there are n - 1
entries (the bottleneck has no output). Without deep supervision (and always in eval mode) the output is entry 0 alone,
(B, C_out, D, H, W). The segmentation heads of every stage exist either way, so the parameter count does not depend
on it (as in nnU-Net).

Input sizes must be multiples of the per-axis product of the strides; the built module declares them as
``segbench_axis_divisors`` (read by :func:`segbench.registry.model_info`).
"""

from __future__ import annotations

import importlib
import logging
import math

from torch import nn

from segbench.errors import ModelError
from segbench.models.monai_adapters import module_installed
from segbench.registry import declare_unavailable, register_model

logger = logging.getLogger(__name__)

SOURCE = "dynamic-network-architectures"
INSTALL_HINT = "pip install 'segbench[nnunet]'"
# A plan may only name network classes of dynamic-network-architectures and layer classes of torch: a plans file is
# data, and importing whatever it names would run arbitrary code.
_NETWORK_PREFIX = "dynamic_network_architectures."
_LAYER_PREFIX = "torch."


def dna_available() -> bool:
    """True if ``dynamic_network_architectures`` can be imported, decided without importing it."""
    return module_installed("dynamic_network_architectures")


def _locate(dotted: str, *, prefix: str, what: str, origin: str) -> type:
    """The class named ``dotted`` (``module.Class``), which must lie under ``prefix``."""
    module, _, name = str(dotted).rpartition(".")
    if not str(dotted).startswith(prefix) or not module:
        raise ModelError(f"{origin} names the {what} {dotted!r}; segbench builds only {prefix}* classes there")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{origin} names the {what} {dotted!r}, which cannot be imported ({exc}); is "
                         f"dynamic-network-architectures up to date? {INSTALL_HINT}") from None  # fmt: skip


def _deep_supervision_in_training_only(module: nn.Module, args: tuple) -> None:
    # Forward pre-hook: the list of outputs is for the training loss; inference (eval mode) gets one tensor.
    module.decoder.deep_supervision = module.training


def axis_divisors(arch_kwargs: dict) -> tuple[int, ...]:
    """Per axis, the product of the stages' strides: input sizes must be multiples of it."""
    strides = arch_kwargs["strides"]
    return tuple(math.prod(int(stage[axis]) for stage in strides) for axis in range(len(strides[0])))


def build_from_plan(
    *, in_channels: int, out_channels: int, plan, preset: str, deep_supervision: bool = False
) -> nn.Module:
    """``preset``'s nnU-Net network under ``plan`` (a :class:`~segbench.plans.network.NetworkPlan`).

    Raises:
        ModelError: the plan names a class outside dynamic-network-architectures / torch, or one that cannot be
            imported.
    """
    from segbench.plans.network import network_architecture_for
    from segbench.plans.presets import get_preset

    architecture = network_architecture_for(plan, get_preset(preset))
    network_class = _locate(architecture["network_class_name"], prefix=_NETWORK_PREFIX, what="network class",
                            origin=plan.origin)  # fmt: skip
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            kwargs[key] = _locate(kwargs[key], prefix=_LAYER_PREFIX, what=key, origin=plan.origin)
    kwargs["deep_supervision"] = bool(deep_supervision)
    network = network_class(input_channels=in_channels, num_classes=out_channels, **kwargs)
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    if deep_supervision:
        network.register_forward_pre_hook(_deep_supervision_in_training_only)
    network.segbench_axis_divisors = axis_divisors(architecture["arch_kwargs"])
    # Per-stage strides: the nnunet recipe downsamples the deep-supervision targets by them (segbench.job).
    network.segbench_strides = tuple(tuple(int(v) for v in stage) for stage in architecture["arch_kwargs"]["strides"])
    return network


def nnunet_plain(*, in_channels: int, out_channels: int, plan, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's ``PlainConvUNet`` (2 convolutions per stage, 32–320 features) for ``plan``."""
    return build_from_plan(in_channels=in_channels, out_channels=out_channels, plan=plan, preset="nnunet",
                           deep_supervision=deep_supervision)  # fmt: skip


def nnunet_resenc_m(*, in_channels: int, out_channels: int, plan, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` (residual blocks 1, 3, 4, 6, 6, … per stage) for ``plan`` (preset M)."""
    return build_from_plan(in_channels=in_channels, out_channels=out_channels, plan=plan, preset="resenc-m",
                           deep_supervision=deep_supervision)  # fmt: skip


def nnunet_resenc_l(*, in_channels: int, out_channels: int, plan, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` for ``plan`` (preset L: the same network as M at the same patch)."""
    return build_from_plan(in_channels=in_channels, out_channels=out_channels, plan=plan, preset="resenc-l",
                           deep_supervision=deep_supervision)  # fmt: skip


def nnunet_resenc_xl(*, in_channels: int, out_channels: int, plan, deep_supervision: bool = False) -> nn.Module:
    """nnU-Net's ``ResidualEncoderUNet`` for ``plan`` (preset XL: the same network as M at the same patch)."""
    return build_from_plan(in_channels=in_channels, out_channels=out_channels, plan=plan, preset="resenc-xl",
                           deep_supervision=deep_supervision)  # fmt: skip


#: Registry name -> (builder, the planner preset whose plan it is made for, family).
NNUNET_NETWORKS = {
    "nnunet_plain": (nnunet_plain, "nnunet", "nnunet_plain"),
    "nnunet_resenc_m": (nnunet_resenc_m, "resenc-m", "nnunet_resenc"),
    "nnunet_resenc_l": (nnunet_resenc_l, "resenc-l", "nnunet_resenc"),
    "nnunet_resenc_xl": (nnunet_resenc_xl, "resenc-xl", "nnunet_resenc"),
}
#: Registry name -> the ``segbench plan --preset`` that plans for it (nnU-Net's plans: nnUNetPlans, ResEnc M/L/XL).
NETWORK_PRESETS = {name: preset for name, (_, preset, _) in NNUNET_NETWORKS.items()}


def register_nnunet_networks() -> list[str]:
    """Register the ``nnunet_*`` networks when dynamic-network-architectures is installed; returns their names
    (empty without it: they are then declared unavailable, with the install command)."""
    if not dna_available():
        logger.debug("dynamic_network_architectures is not installed: nnunet_* models are not registered")
        for name in NNUNET_NETWORKS:
            declare_unavailable(name, reason=f"needs dynamic-network-architectures, which is not installed: "
                                f"{INSTALL_HINT}")  # fmt: skip
        return []
    for name, (builder, _, family) in NNUNET_NETWORKS.items():
        register_model(name, family=family, divisor=1, source=SOURCE, needs_plan=True,
                       deep_supervision=True)(builder)  # fmt: skip
    return list(NNUNET_NETWORKS)
