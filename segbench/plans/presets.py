"""The planner presets: nnU-Net v2's default ``ExperimentPlanner`` and its residual-encoder presets M, L and XL.

A preset is data: the network family the plan is for, its blocks per stage, and the VRAM reference that the
feature-map count of :mod:`segbench.plans.vram` is compared with. Values are nnU-Net 2.8.1's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlannerPreset:
    """How one nnU-Net planner plans.

    Attributes:
        name: segbench's name (``--preset``).
        planner: nnU-Net's class name (the plans file's ``experiment_planner_used``).
        plans_name: nnU-Net's plans identifier (file name without ``.json``).
        network_class_name: the dynamic-network-architectures class the plan is for.
        residual: residual encoder (``n_blocks_per_stage``) instead of plain (``n_conv_per_stage``).
        blocks_encoder, blocks_decoder: blocks (or convolutions) per stage, cut to the number of stages.
        reference_3d, reference_2d: feature-map elements that fit ``reference_gb`` at the reference batch size.
        reference_gb: the GPU memory (GB) the reference values were tuned for.
        gpu_memory_gb: the target GPU memory (GB) the preset plans for.
        max_dataset_covered: the largest share of the dataset's voxels one batch may cover.
        min_batch_per_reference: True for the default planner, whose patch loop compares the estimate at the
            minimum batch size (the reference's batch size scaled to 2); the ResEnc planners compare it as is.
    """

    name: str
    planner: str
    plans_name: str
    network_class_name: str
    residual: bool
    blocks_encoder: tuple[int, ...]
    blocks_decoder: tuple[int, ...]
    reference_3d: float
    reference_2d: float
    reference_gb: float
    gpu_memory_gb: float
    max_dataset_covered: float
    min_batch_per_reference: bool

    #: Features of the first stage, doubled per stage up to the cap (320 in 3D, 512 in 2D).
    base_features: int = 32
    max_features_3d: int = 320
    max_features_2d: int = 512
    reference_batch_3d: int = 2
    reference_batch_2d: int = 12
    min_batch_size: int = 2

    def data_identifier(self, configuration: str) -> str:
        """The preprocessed-data folder name nnU-Net gives a configuration (ResEnc reuses the default's data)."""
        if self.residual and configuration in ("2d", "3d_fullres"):
            return f"nnUNetPlans_{configuration}"
        return f"{self.plans_name}_{configuration}"


_UNET = "dynamic_network_architectures.architectures.unet."
_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)


def _resenc(size: str, reference_3d: float, reference_2d: float, gb: float) -> PlannerPreset:
    return PlannerPreset(
        name=f"resenc-{size.lower()}",
        planner=f"nnUNetPlannerResEnc{size}",
        plans_name=f"nnUNetResEncUNet{size}Plans",
        network_class_name=_UNET + "ResidualEncoderUNet",
        residual=True,
        blocks_encoder=_RESENC_BLOCKS,
        blocks_decoder=(1,) * 12,
        reference_3d=reference_3d,
        reference_2d=reference_2d,
        reference_gb=gb,
        gpu_memory_gb=gb,
        max_dataset_covered=1.0,
        min_batch_per_reference=False,
    )


PRESETS: dict[str, PlannerPreset] = {
    "nnunet": PlannerPreset(
        name="nnunet",
        planner="ExperimentPlanner",
        plans_name="nnUNetPlans",
        network_class_name=_UNET + "PlainConvUNet",
        residual=False,
        blocks_encoder=(2,) * 14,
        blocks_decoder=(2,) * 13,
        reference_3d=560_000_000,
        reference_2d=85_000_000,
        reference_gb=8,
        gpu_memory_gb=8,
        max_dataset_covered=0.05,
        min_batch_per_reference=True,
    ),
    "resenc-m": _resenc("M", 680_000_000, 135_000_000, 8),
    "resenc-l": _resenc("L", 2_100_000_000, 380_000_000, 24),
    "resenc-xl": _resenc("XL", 3_600_000_000, 560_000_000, 40),
}


def get_preset(name: str) -> PlannerPreset:
    """The preset called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the choices).
    """
    from segbench.errors import ConfigError

    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown planner preset {name!r}; choose one of {', '.join(PRESETS)}") from None
