"""Entry-point plugins, discovered for real by importlib.metadata from ``*.dist-info`` folders put on sys.path.

Each test writes a tiny distribution (a module plus ``NAME-0.1.dist-info/{METADATA,entry_points.txt}``) into
its own tmp_path; the plugin modules never import segbench, as a real plugin need not.
"""

from __future__ import annotations

import sys

import pytest
import torch
from click.testing import CliRunner

from segbench.cli import main
from segbench.errors import ModelError
from segbench.registry import build_model, list_models, model_info, resolve_models

torch.set_num_threads(1)


def test_plugin_listed_without_import_then_built(plugins):
    plugins.add("segbench-toy", {"toynet": "toy_plugin:build", "toyplain": "toy_plugin:plain"}, module="toy_plugin")
    assert list_models("toy*") == ["toynet", "toyplain"]
    assert "toy_plugin" not in sys.modules  # listed from metadata alone
    model = build_model("toynet", in_channels=2, out_channels=3, hidden=5)
    assert model(torch.zeros(1, 2, 8, 16, 8)).shape == (1, 3, 8, 16, 8)
    info = model_info("toynet")
    assert (info.source, info.family, info.divisor, info.params) == ("segbench-toy", "toy", 8, 27 * 4 + 4 + 4 + 1)
    # Without the optional attributes: divisor 1 and the model name as family.
    assert (model_info("toyplain").divisor, model_info("toyplain").family) == (1, "toyplain")
    assert resolve_models("fcn,toy*") == ["fcn", "toynet", "toyplain"]


def test_broken_plugin_fails_only_when_used(plugins):
    plugins.add("segbench-broken", {"brokennet": "broken_plugin:build"}, module="broken_plugin",
                source="raise ImportError('needs torch-sparse-3d')")  # fmt: skip
    assert "brokennet" in list_models()
    assert build_model("fcn", in_channels=1, out_channels=1) is not None  # other models are unaffected
    with pytest.raises(ModelError) as excinfo:
        build_model("brokennet", in_channels=1, out_channels=1)
    message = str(excinfo.value)
    assert "plugin model 'brokennet' from distribution 'segbench-broken'" in message
    assert "ImportError: needs torch-sparse-3d" in message
    assert "SEGBENCH_DISABLE_PLUGINS=1" in message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("toy_bad:NOT_CALLABLE", "is not callable"),
        ("toy_bad:bad_divisor", "segbench_divisor=0"),
        ("toy_bad:fails", "failed to build \\(ValueError: no GPU kernels"),
        ("toy_bad:not_a_module", "returned str, not nn.Module"),
        ("toy_bad:missing", "failed to load \\(AttributeError"),
    ],
)
def test_bad_plugin_objects_give_clear_errors(plugins, target, expected):
    plugins.add("segbench-bad", {"badnet": target}, module="toy_bad")
    with pytest.raises(ModelError, match=expected):
        build_model("badnet", in_channels=1, out_channels=1)


def test_environment_variable_disables_plugins(plugins, monkeypatch):
    plugins.add("segbench-toy", {"toynet": "toy_plugin:build"}, module="toy_plugin")
    monkeypatch.setenv("SEGBENCH_DISABLE_PLUGINS", "1")
    assert "toynet" not in list_models()
    with pytest.raises(ModelError, match="unknown model 'toynet'"):
        build_model("toynet", in_channels=1, out_channels=1)
    monkeypatch.setenv("SEGBENCH_DISABLE_PLUGINS", "0")
    assert "toynet" in list_models()


def test_plugin_shadowing_a_builtin_is_an_error_when_used(plugins):
    plugins.add("segbench-shadow", {"unet": "shadow:plain", "fcn_w7_d2": "shadow:plain"}, module="shadow")
    assert list_models().count("unet") == 1
    for name in ("unet", "fcn_w7_d2"):
        with pytest.raises(ModelError, match=f"'{name}' is provided by both 'segbench' and .*'segbench-shadow'"):
            build_model(name, in_channels=1, out_channels=1)
    assert build_model("fcn", in_channels=1, out_channels=1) is not None


def test_two_distributions_with_one_name_is_an_error(plugins):
    plugins.add("segbench-one", {"twin": "twin_one:plain"}, module="twin_one")
    plugins.add("segbench-two", {"twin": "twin_two:plain"}, module="twin_two")
    with pytest.raises(ModelError, match="several plugin distributions \\('segbench-one', 'segbench-two'\\)"):
        build_model("twin", in_channels=1, out_channels=1)


def test_cli_shows_plugin_distribution_and_survives_a_broken_plugin(plugins):
    plugins.add("segbench-toy", {"toynet": "toy_plugin:build"}, module="toy_plugin")
    plugins.add("segbench-broken", {"toybroken": "broken_plugin:build"}, module="broken_plugin", source="1/0")
    result = CliRunner().invoke(main, ["models", "toy*"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["toynet"][:3] == ["toynet", "toy", "segbench-toy"]
    assert rows["toynet"][-1] == "8"
    assert rows["toybroken"][1:] == ["?"] * 6
    assert "warning: plugin model 'toybroken' from distribution 'segbench-broken'" in result.stderr
    assert "ZeroDivisionError" in result.stderr
