"""Named recipes (--recipe): their values, the budget in epochs, and the deviations a run records and reports."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from click.testing import CliRunner

from segbench.cli import main
from segbench.config import config_from_dict, config_to_dict
from segbench.errors import ConfigError
from segbench.recipes.catalog import (
    budget_text,
    deviations,
    epochs,
    model_train_config,
    recipe_config,
    recipe_record,
    with_epochs,
)
from segbench.report.recipe import recipe_sentence


def test_the_nnunet_recipe_is_nnunet_trainers_values():
    config = recipe_config("nnunet")
    train, inference = config.train, config.inference
    assert (train.optimizer, train.lr, train.weight_decay, train.poly_power, train.grad_clip) == (
        "sgd", 1e-2, 3e-5, 0.9, 12.0,
    )  # fmt: skip
    assert (train.iterations_per_epoch, epochs(train)) == (250, 1000)
    assert (train.fg_fraction, train.loss, train.pipeline, train.deep_supervision) == (0.33, "nnunet", "nnunet", True)
    assert (inference.overlap, inference.mirror, inference.gaussian) == (0.5, True, True)
    assert recipe_config("tutorial").train == config_from_dict(config_to_dict(recipe_config("tutorial"))).train


def test_the_named_recipe_itself_has_no_deviation():
    for name in ("tutorial", "nnunet"):
        assert deviations(recipe_config(name)) == []
    planned = {"patch_size": (40, 56, 40), "batch_size": 2}
    nnunet = recipe_config("nnunet")
    on_plan = dataclasses.replace(nnunet, train=dataclasses.replace(nnunet.train, patch_size=(40, 56, 40)))
    assert deviations(on_plan, planned=planned) == []


def test_each_overridden_value_is_one_deviation():
    nnunet = recipe_config("nnunet")
    changed = dataclasses.replace(
        nnunet,
        train=dataclasses.replace(
            nnunet.train, lr=3e-3, patch_size=(32, 32, 32), iterations=20, model_optimizers=(("unet", "adamw", 1e-4),)
        ),  # fmt: skip
        inference=dataclasses.replace(nnunet.inference, mirror=False),
    )
    found = deviations(changed, planned={"patch_size": (40, 56, 40), "batch_size": 2})
    assert "train.lr: 0.01 -> 0.003" in found
    assert "train.patch_size: (40, 56, 40) -> (32, 32, 32)" in found
    assert "inference.mirror: True -> False" in found
    assert "train.iterations: 20 is not a whole number of epochs of 250" in found
    assert "unet: optimizer adamw at lr 0.0001 (instead of sgd at 0.003)" in found
    assert len(found) == 5


def test_budget_reads_in_the_recipes_unit():
    nnunet = recipe_config("nnunet")
    assert budget_text(with_epochs(nnunet, 5).train) == "5 epochs × 250 iterations"
    assert budget_text(with_epochs(nnunet, 1).train) == "1 epoch × 250 iterations"
    assert budget_text(dataclasses.replace(nnunet.train, iterations=20)) == "0.08 epochs (20 iterations)"
    assert budget_text(recipe_config("tutorial").train) == "120 iterations"
    with pytest.raises(ConfigError, match="--epochs needs a recipe whose budget is counted in epochs"):
        with_epochs(recipe_config("tutorial"), 2)


def test_a_models_optimizer_override_applies_to_that_model_only():
    train = dataclasses.replace(recipe_config("nnunet").train, model_optimizers=(("swinunetr", "adamw", 1e-4),))
    assert (model_train_config(train, "swinunetr").optimizer, model_train_config(train, "swinunetr").lr) == (
        "adamw", 1e-4,
    )  # fmt: skip
    assert model_train_config(train, "unet") is train
    stored = config_from_dict(config_to_dict(dataclasses.replace(recipe_config("nnunet"), train=train)))
    assert stored.train.model_optimizers == (("swinunetr", "adamw", 1e-4),)


def test_the_report_names_recipe_budget_deviations_and_deep_supervision():
    config = with_epochs(recipe_config("nnunet"), 5)
    manifest = {"config": config_to_dict(config), "recipe": recipe_record(config)}
    jobs = pd.DataFrame({"model": ["nnunet_plain", "unet"], "deep_supervision": [True, False]})
    sentence = recipe_sentence(manifest, jobs)
    assert sentence.startswith("Recipe: nnunet (nnU-Net v2.8.1 nnUNetTrainer")
    assert "budget 5 epochs × 250 iterations per job" in sentence
    assert "deviations from the recipe: none" in sentence
    assert "deep supervision: nnunet_plain yes, unet no (no deep-supervision outputs)" in sentence
    old_run = {"config": {"train": {"iterations": 120}}}  # a manifest from before recipes
    assert "budget 120 iterations per job" in recipe_sentence(old_run, pd.DataFrame())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epochs", "2"], "--epochs needs a recipe whose budget is counted in epochs"),
        (["--recipe", "nnunet", "--epochs", "2", "--iterations", "5"], "--epochs sets the budget"),
        (["--optimizer-for", "unet:adamw"], "is not MODEL=OPTIMIZER:LR"),
    ],
)
def test_recipe_flags_are_refused_in_one_sentence(tmp_path, args, message):
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code != 0
    assert message in result.output
    assert not (tmp_path / "run").exists()
