"""The recipes a run can name (``--recipe``), and how a run's settings deviate from the one it names.

A recipe is data: the :class:`~segbench.config.TrainConfig` and :class:`~segbench.config.InferenceConfig` values
that define it. ``segbench run --recipe NAME`` starts from them, the flags a user gives override single values, and
:func:`deviations` lists every overridden value in the manifest and the report, so that a table never calls
"nnU-Net's recipe" what was trained with another learning rate or a tenth of the budget.

* ``tutorial``: the tutorial this project started from. Adam at 3e-3, random flips and intensity jitter, Dice + BCE,
  32×32×24 patches, 120 iterations. Right for the embedded demo; the field would not accept a verdict on real data
  reached with it.
* ``nnunet``: nnU-Net v2.8.1's ``nnUNetTrainer``. A plan (computed on the fly without ``--plans``) gives spacing,
  normalization, patch and batch; foreground oversampling 0.33; batchgeneratorsv2's training augmentation; Dice + CE
  with deep supervision where the model has such outputs; SGD (Nesterov 0.99) at 1e-2, weight decay 3e-5, poly 0.9,
  gradient clipping at 12; the budget counted in epochs of 250 iterations (1000 epochs by default, as nnU-Net);
  sliding-window inference with step 0.5, Gaussian weighting and mirroring over all axes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from segbench.config import InferenceConfig, RunConfig, TrainConfig
from segbench.errors import ConfigError

NNUNET_ITERATIONS_PER_EPOCH = 250
NNUNET_EPOCHS = 1000


@dataclass(frozen=True)
class Recipe:
    """A named training recipe.

    Attributes:
        name: ``--recipe`` value.
        title: one line for reports, naming where the recipe comes from.
        train, inference: the recipe's values (patch and batch size are the plan's where ``needs_plan``).
        needs_plan: spacing, normalization, patch and batch come from an nnU-Net plan.
    """

    name: str
    title: str
    train: TrainConfig
    inference: InferenceConfig
    needs_plan: bool = False


RECIPES: dict[str, Recipe] = {
    "tutorial": Recipe(
        name="tutorial",
        title="tutorial (Adam, flips + intensity jitter, Dice + BCE, 32×32×24 patches)",
        train=TrainConfig(),
        inference=InferenceConfig(),
    ),
    "nnunet": Recipe(
        name="nnunet",
        title="nnunet (nnU-Net v2.8.1 nnUNetTrainer: plan, oversampling 0.33, batchgeneratorsv2 augmentation, "
        "Dice + CE with deep supervision, SGD 1e-2 poly, epochs of 250 iterations, mirrored Gaussian sliding window)",
        train=TrainConfig(
            iterations=NNUNET_EPOCHS * NNUNET_ITERATIONS_PER_EPOCH,
            iterations_per_epoch=NNUNET_ITERATIONS_PER_EPOCH,
            optimizer="sgd",
            lr=1e-2,
            poly_power=0.9,
            weight_decay=3e-5,
            loss="nnunet",
            fg_fraction=0.33,
            pipeline="nnunet",
            deep_supervision=True,
            grad_clip=12.0,
            # Not part of the recipe (no deviation when changed): nnU-Net trains contiguous, and its networks
            # (instance norm) took 2.4x longer per step channels-last on a 2-core CPU (PlainConvUNet, 2 x 32x48x48).
            memory_format="contiguous",
        ),
        inference=InferenceConfig(overlap=0.5, mirror=True, gaussian=True),
        needs_plan=True,
    ),
}

# The fields that make up a recipe (a changed value is a deviation); numerics, workers and logging are not part of it.
_RECIPE_TRAIN_FIELDS = (
    "time_budget_s", "batch_size", "patch_size", "optimizer", "lr", "poly_power", "weight_decay", "loss",
    "fg_fraction", "augment", "grad_clip", "iterations_per_epoch", "pipeline", "deep_supervision",
)  # fmt: skip
_RECIPE_INFERENCE_FIELDS = ("overlap", "mirror", "gaussian")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: unknown name (the message lists the choices).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def recipe_config(name: str) -> RunConfig:
    """The run configuration a recipe starts from (every other setting at its default)."""
    recipe = get_recipe(name)
    return RunConfig(recipe=name, train=recipe.train, inference=recipe.inference)


def epochs(train: TrainConfig) -> float | None:
    """The budget in epochs (``iterations / iterations_per_epoch``), or ``None`` for a recipe counted in iterations."""
    if train.iterations_per_epoch is None:
        return None
    return train.iterations / train.iterations_per_epoch


def budget_text(train: TrainConfig) -> str:
    """The budget as a report shows it: ``"5 epochs × 250 iterations"``, ``"0.08 epochs (20 iterations)"``,
    ``"120 iterations"`` or ``"600 s of training"``."""
    if train.time_budget_s is not None:
        return f"{train.time_budget_s:g} s of training"
    count = epochs(train)
    if count is None:
        return f"{train.iterations} iterations"
    if count == int(count):
        return f"{int(count)} epoch{'s' if count != 1 else ''} × {train.iterations_per_epoch} iterations"
    return f"{count:.3g} epochs ({train.iterations} iterations)"


def with_epochs(config: RunConfig, count: int) -> RunConfig:
    """``config`` with a budget of ``count`` epochs.

    Raises:
        ConfigError: the recipe counts its budget in iterations, or ``count`` is not positive.
    """
    per_epoch = config.train.iterations_per_epoch
    if per_epoch is None:
        raise ConfigError(f"--epochs needs a recipe whose budget is counted in epochs (--recipe nnunet); the "
                          f"{config.recipe!r} recipe counts iterations: use --iterations")  # fmt: skip
    if count < 1:
        raise ConfigError(f"--epochs must be positive (got {count})")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, iterations=count * per_epoch))


def model_train_config(train: TrainConfig, model: str) -> TrainConfig:
    """The training settings of one model: the run's, with that model's optimiser override if it has one."""
    for name, optimizer, lr in train.model_optimizers:
        if name == model:
            return dataclasses.replace(train, optimizer=optimizer, lr=lr)
    return train


def deviations(config: RunConfig, *, planned: dict[str, object] | None = None) -> list[str]:
    """Every value of ``config`` that differs from the recipe it names, as ``"train.lr: 0.01 -> 0.003"`` lines.

    Args:
        config: the run's configuration.
        planned: the plan's values of recipe fields (``{"patch_size": (…), "batch_size": 2}``) for a recipe that
            takes them from a plan; without it, patch and batch size are not compared for such a recipe.

    A budget that is not a whole number of epochs is a deviation (``--iterations`` under an epoch recipe); the number
    of epochs itself is a parameter of the recipe and shown with every result instead.
    """
    recipe = get_recipe(config.recipe)
    reference = dataclasses.replace(recipe.train, **(planned or {}))
    skip = () if planned or not recipe.needs_plan else ("patch_size", "batch_size")
    lines = [_change("train", name, getattr(reference, name), getattr(config.train, name))
             for name in _RECIPE_TRAIN_FIELDS if name not in skip]  # fmt: skip
    lines += [_change("inference", name, getattr(recipe.inference, name), getattr(config.inference, name))
              for name in _RECIPE_INFERENCE_FIELDS]  # fmt: skip
    count = epochs(config.train)
    if count is not None and count != int(count) and config.train.time_budget_s is None:
        lines.append(f"train.iterations: {config.train.iterations} is not a whole number of epochs of "
                     f"{config.train.iterations_per_epoch}")  # fmt: skip
    lines += [f"{model}: optimizer {optimizer} at lr {lr:g} (instead of {config.train.optimizer} at "
              f"{config.train.lr:g})" for model, optimizer, lr in config.train.model_optimizers]  # fmt: skip
    return [line for line in lines if line]


def _change(section: str, name: str, expected: object, actual: object) -> str:
    if _normalised(expected) == _normalised(actual):
        return ""
    return f"{section}.{name}: {_normalised(expected)!r} -> {_normalised(actual)!r}"


def _normalised(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def recipe_record(config: RunConfig, *, plan: object | None = None) -> dict[str, object]:
    """``manifest.json["recipe"]``: the recipe's name and title, the budget, and the deviations from the recipe.

    Args:
        plan: the run's :class:`~segbench.plans.reader.PlanSettings` (its patch and batch size are the recipe's
            values for a recipe that takes them from a plan).
    """
    recipe = get_recipe(config.recipe)
    planned = None
    if plan is not None and recipe.needs_plan:
        planned = {"patch_size": tuple(plan.patch_size), "batch_size": int(plan.batch_size)}
    return {
        "name": recipe.name,
        "title": recipe.title,
        "budget": budget_text(config.train),
        "epochs": epochs(config.train),
        "iterations": config.train.iterations,
        "deviations": deviations(config, planned=planned),
    }
