"""`segbench models [PATTERN]` through click and through the installed console script."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from click.testing import CliRunner

from segbench.cli import main
from segbench.registry import list_models, model_info, needs_plan

HEADER = ["name", "family", "source", "params", "MFLOP/vox fwd", "MFLOP/vox train", "divisor"]


def _rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split("  ")[0] == "name" and set(lines[1]) <= {"-", " "}
    return {line.split()[0]: line.split() for line in lines[2:]}


@pytest.fixture(scope="module")
def full_listing() -> str:
    # Counting FLOPs of every model takes a few seconds; later invocations reuse the per-process cache.
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_lists_tutorial_nets_and_grid(full_listing):
    header = full_listing.splitlines()[0]
    assert [h.strip() for h in header.split("  ") if h.strip()] == HEADER
    rows = _rows(full_listing)
    assert set(rows) == {name for name in list_models() if not needs_plan(name)}  # the others need --plans
    assert rows["fcn"] == ["fcn", "fcn", "segbench", "339,303", "0.0535", "0.1604", "4"]
    assert rows["unet"][:4] == ["unet", "unet", "segbench", "769,023"]
    assert rows["unet_w40_d4"][-1] == "16"
    info = model_info("unet_w20_d3")
    assert float(rows["unet_w20_d3"][4]) == pytest.approx(info.mflop_per_voxel_forward, abs=5e-5)


def test_pattern_filters(full_listing):
    result = CliRunner().invoke(main, ["models", "unet_*"])
    assert result.exit_code == 0, result.output
    assert sorted(_rows(result.stdout)) == list_models("unet_*")
    assert "fcn" not in _rows(result.stdout) and "unet" not in _rows(result.stdout)


def test_unlisted_family_member_by_exact_name():
    result = CliRunner().invoke(main, ["models", "fcn,unet_w4_d1"])
    assert result.exit_code == 0, result.output
    assert list(_rows(result.stdout)) == ["fcn", "unet_w4_d1"]
    assert _rows(result.stdout)["unet_w4_d1"][-1] == "2"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("vnet", "error: unknown model 'vnet'; did you mean 'unet'? choose from: fcn, "),
        ("vnet_*", "error: model pattern"),
    ],
)
def test_bad_pattern_is_one_clear_error(pattern, message):
    result = CliRunner().invoke(main, ["models", pattern])
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.output


def test_console_script():
    executable = shutil.which("segbench")
    if executable is None:
        pytest.skip("the segbench console script is not on PATH (package not installed)")
    result = subprocess.run([executable, "models", "fcn"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _rows(result.stdout)["fcn"][:4] == ["fcn", "fcn", "segbench", "339,303"]
