"""The run configuration: frozen dataclasses with commented defaults, saved in ``manifest.json``.

One recipe for every model (DESIGN.md, "Training recipe"): the same budget, patch, batch, optimiser and loss.
Unknown keys are an error (:func:`config_from_dict`), so a typo in a config file never silently falls back to a
default. The defaults are chosen so that ``segbench run --folds 5`` on the embedded synthetic dataset finishes on a
2-core CPU in minutes and already separates the tutorial's U-Net from its FCN.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from segbench.errors import ConfigError

# Choices of --precision and --memory-format (what each means and how `auto` resolves: segbench.precision). Here, so
# that reading a config never imports torch.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
RECIPES = ("tutorial", "nnunet")  # --recipe (segbench.recipes)
OPTIMIZERS = ("adam", "sgd", "adamw")
LOSSES = ("auto", "dice_bce", "dice_ce", "nnunet")  # "nnunet": nnU-Net's Dice + CE (segbench.recipes.nnunet_loss)

# Keys of configs written before --precision/--memory-format existed: those runs trained with other numerics
# (fp16 AMP on CUDA only, fp32 on CPU), which no value of the new keys reproduces on every device.
_LEGACY_TRAIN_KEYS = {"amp": "precision", "channels_last": "memory_format"}


@dataclass(frozen=True)
class TrainConfig:
    """Training recipe shared by every (model, fold) job."""

    # Budget per job in optimiser steps (ignored when time_budget_s is set). Kept at 120 after the bf16 speed-up:
    # fewer steps cost the U-Net Dice the default run must show (README, "How the default budget was chosen").
    iterations: int = 120
    time_budget_s: float | None = None  # alternative budget: seconds of training per job, same for every model
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (32, 32, 24)  # voxels, array-axis order; must suit every model's divisor
    optimizer: str = "adam"  # "adam", "sgd" (Nesterov momentum 0.99, as nnU-Net) or "adamw"
    lr: float = 3e-3  # initial learning rate, decayed by the poly schedule (1 - progress) ** poly_power
    poly_power: float = 0.9
    weight_decay: float = 3e-5
    loss: str = "auto"  # "auto": Dice + BCE for one output channel, Dice + CE otherwise; or "dice_bce" / "dice_ce"
    fg_fraction: float = 1 / 3  # share of patches forced to contain foreground
    augment: bool = True  # random flips + intensity scale/shift
    # "auto": bf16 autocast where the CPU/GPU executes bf16 natively, fp16 + GradScaler on older GPUs, else fp32;
    # or "fp32" / "bf16" / "fp16" (segbench.precision). Each job records the resolved value in jobs.csv.
    precision: str = "auto"
    memory_format: str = "auto"  # "auto" (= channels_last: faster on every device measured) or "contiguous"
    num_workers: int | None = (
        None  # DataLoader worker processes; None = auto (CPU 0, CUDA 1: sampling.resolve_num_workers)
    )
    log_every: int = 10  # learning-curve row every N iterations
    checkpoint_every: int = 50  # rotating checkpoint every N iterations (and at the end)
    grad_clip: float = 12.0  # max gradient norm (nnU-Net's value); 0 disables
    # The recipe's budget unit: None counts the budget in iterations; nnU-Net counts epochs of 250 iterations, and
    # `iterations` then holds epochs × iterations_per_epoch (segbench.recipes.epochs shows it as epochs).
    iterations_per_epoch: int | None = None
    # "tutorial" (PatchDataset: flips + intensity jitter) or "nnunet" (nnU-Net's sampling and batchgeneratorsv2
    # augmentation, segbench.recipes.nnunet_sampling)
    pipeline: str = "tutorial"
    deep_supervision: bool = False  # train models that have deep-supervision outputs with nnU-Net's weighted loss
    batch_dice: bool = False  # loss "nnunet": one Dice per class over the batch (the plan's batch_dice, --plans)
    # Per-model optimiser overrides (model, optimiser, lr), e.g. (("swinunetr", "adamw", 1e-4),): deviations
    model_optimizers: tuple[tuple[str, str, float], ...] = ()


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window prediction of the out-of-fold cases."""

    overlap: float = 0.5  # fraction of the window shared with its neighbour along each axis
    batch_size: int = 4  # windows per forward pass
    mirror: bool = False  # test-time augmentation over the 8 axis flips
    gaussian: bool = True  # Gaussian importance weighting of window centres
    # Keep each out-of-fold case's class probabilities (<case_id>.npz beside its prediction) for `segbench ensemble`.
    # Changes no result: a resume may switch it on (jobs then add the missing files).
    save_probabilities: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines the results of a run (``manifest.json["config"]``)."""

    data: str | None = None  # dataset folder; None = the embedded synthetic Task02-like default
    recipe: str = "tutorial"  # the named training recipe (segbench.recipes): "tutorial" or "nnunet"
    models: tuple[str, ...] = ("fcn", "unet")
    folds: int = 5
    splits: str = "kfold"  # "kfold", "nnunet" or a splits_final.json path
    seed: int = 0
    repeats: int = 1  # training seeds per (model, fold): R > 1 measures training-seed variance (same splits)
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    target_spacing: tuple[float, float, float] | None = None  # resample to this spacing (mm); None keeps native
    # NSD tolerance. 4 mm exceeds the embedded dataset's largest voxel spacing (3.4 mm), so its NSD counts boundary
    # voxels one voxel apart as agreeing; at 2 mm it would count only coinciding voxels (a warning names this case).
    tolerance_mm: float = 4.0
    job_timeout_s: float | None = None  # wall-clock limit per job; exceeded -> status "timeout"
    match: str | None = None  # "flops", "params" or "memory": scale family members to match_to's cost (matching.py)
    match_to: str | None = None  # the reference model of `match`
    # nnU-Net plans file (--plans): spacing, transposition, patch, batch, normalization and resampling come from it
    plans: str | None = None
    configuration: str = "3d_fullres"  # the plans file's configuration (--configuration)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def __post_init__(self) -> None:
        validate_config(self)


def validate_config(config: RunConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    train = config.train
    checks = [
        (config.folds >= 2, f"--folds must be at least 2 (got {config.folds})"),
        (config.repeats >= 1, f"--repeats must be at least 1 (got {config.repeats})"),
        (
            config.splits != "nnunet" or config.folds == 5,
            f"--splits nnunet makes nnU-Net's 5 folds; drop --folds {config.folds} or pass --folds 5",
        ),
        (len(config.models) > 0, "--models selects no model"),
        (train.iterations > 0, f"--iterations must be positive (got {train.iterations})"),
        (train.time_budget_s is None or train.time_budget_s > 0, "--time-budget must be positive"),
        (train.batch_size > 0, f"--batch-size must be positive (got {train.batch_size})"),
        (len(train.patch_size) == 3 and all(int(s) > 0 for s in train.patch_size), "--patch needs 3 positive sizes"),
        *_recipe_checks(config),
        (
            train.precision in PRECISIONS,
            f"--precision must be one of {', '.join(PRECISIONS)} (got {train.precision!r})",
        ),
        (
            train.memory_format in MEMORY_FORMATS,
            f"--memory-format must be one of {', '.join(MEMORY_FORMATS)} (got {train.memory_format!r})",
        ),
        (train.lr > 0, f"learning rate must be positive (got {train.lr})"),
        (0 <= train.fg_fraction <= 1, "fg_fraction must lie in [0, 1]"),
        (0 <= config.inference.overlap < 1, "inference overlap must lie in [0, 1)"),
        (config.inference.batch_size > 0, "inference batch_size must be positive"),
        (
            train.num_workers is None or train.num_workers >= 0,
            f"--num-workers must not be negative (got {train.num_workers})",
        ),
        (train.log_every > 0, "log_every must be positive"),
        # A checkpoint mid-window would lose the partial loss window on resume: the curve would differ.
        (
            train.checkpoint_every > 0 and train.log_every > 0 and train.checkpoint_every % train.log_every == 0,
            f"--checkpoint-every must be a positive multiple of the learning-curve interval ({train.log_every} "
            f"iterations), got {train.checkpoint_every}",
        ),
        (train.grad_clip >= 0 and train.weight_decay >= 0, "grad_clip and weight_decay must not be negative"),
        (config.job_timeout_s is None or config.job_timeout_s > 0, "--job-timeout must be positive"),
        (config.tolerance_mm >= 0, "--tolerance-mm must not be negative"),
        (
            config.match in (None, "flops", "params", "memory"),
            f"--match must be flops, params or memory (got {config.match!r})",
        ),
        (
            config.match is None or bool(config.match_to),
            "--match needs --match-to MODEL, the model whose cost to match",
        ),
        (config.match_to is None or config.match is not None, "--match-to needs --match flops, params or memory"),
        (
            config.plans is None or config.target_spacing is None,
            "--target-spacing and --plans both set the spacing; drop --target-spacing (the plan's spacing is used)",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _recipe_checks(config: RunConfig) -> list[tuple[bool, str]]:
    """The checks of the recipe's fields: names from the catalogues above, a positive epoch length and overrides."""
    train = config.train
    return [
        (train.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)} (got {train.optimizer!r})"),
        (train.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)} (got {train.loss!r})"),
        (config.recipe in RECIPES, f"--recipe must be one of {', '.join(RECIPES)} (got {config.recipe!r})"),
        (train.pipeline in RECIPES, f"pipeline must be one of {', '.join(RECIPES)} (got {train.pipeline!r})"),
        (
            train.iterations_per_epoch is None or train.iterations_per_epoch > 0,
            "iterations_per_epoch must be positive",
        ),
        (
            all(opt in OPTIMIZERS and lr > 0 for _, opt, lr in train.model_optimizers),
            f"--optimizer-for needs MODEL=OPTIMIZER:LR with an optimizer of {', '.join(OPTIMIZERS)} and a positive lr",
        ),
    ]


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """Plain JSON-ready dict (tuples become lists)."""
    return _tuples_to_lists(dataclasses.asdict(config))


def _tuples_to_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _tuples_to_lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_tuples_to_lists(item) for item in value]
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name == "train":
            value = _build(TrainConfig, value, f"{where}.train")
        elif name == "inference":
            value = _build(InferenceConfig, value, f"{where}.inference")
        elif isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Inverse of :func:`config_to_dict`.

    Raises:
        ConfigError: unknown keys, or the ``train.amp`` / ``train.channels_last`` keys of a run made by a segbench
            older than ``--precision`` (such a run cannot be continued: its jobs trained with other numerics).
    """
    legacy = sorted(set(_LEGACY_TRAIN_KEYS) & set(data.get("train") or {})) if isinstance(data, dict) else []
    if legacy:
        replaced = ", ".join(f"train.{key} (now train.{_LEGACY_TRAIN_KEYS[key]})" for key in legacy)
        raise ConfigError(
            f"the stored run configuration uses {replaced} from a segbench version before --precision/--memory-format; "
            "its jobs cannot be continued with this version (they trained with other numerics): start a new run "
            "with another --out (`segbench report` still reads the old run)"
        )
    return _build(RunConfig, data, "config")


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two config dicts, e.g. ``"train.lr: 0.003 -> 0.01"``."""
    differences = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}{key}"
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            differences.extend(config_differences(a, b, prefix=f"{name}."))
        elif a != b:
            differences.append(f"{name}: {a!r} -> {b!r}")
    return differences
