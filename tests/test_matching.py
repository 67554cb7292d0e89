"""Compute matching (segbench.matching): the closest width per family and measure, recorded deviations, refusals,
plugin families; one tiny matched run through the console script."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from segbench import registry
from segbench.errors import ConfigError, ModelError
from segbench.matching import CostContext, closest_width, match_models, model_cost
from segbench.memory import training_step_memory
from segbench.profiling import count_flops, count_parameters
from segbench.registry import Knob, build_model, family_member, list_models

torch.set_num_threads(1)

# Small patch and batch: memory estimates take a fraction of a second each.
CONTEXT = CostContext(patch_size=(16, 16, 16), batch_size=1, precision="fp32", memory_format="contiguous")
REFERENCE = "unet_w8_d2"  # a small target keeps the brute-force searches below short


def _real_cost(name: str, measure: str, *, device: str = "meta") -> float:
    """The cost computed independently of segbench.matching, on another input size (``meta``: no compute)."""
    with torch.device(device):
        model = build_model(name, in_channels=1, out_channels=1)
    if measure == "params":
        return float(count_parameters(model))
    if measure == "flops":
        shape = (1, 1, 16, 8, 24)  # any size divisible by 2**depth gives the same FLOPs per voxel
        return count_flops(model, shape, train_step=True) / math.prod(shape[2:]) / 1e6
    step = training_step_memory(name, in_channels=1, out_channels=1, patch_size=CONTEXT.patch_size, batch_size=1,
                                precision="fp32", memory_format="contiguous", fake=True)  # fmt: skip
    return step.peak_mb


@pytest.mark.parametrize("measure", ["flops", "params", "memory"])
@pytest.mark.parametrize("requested", ["unet_w20_d3", "fcn_w20_d2"])
@pytest.mark.slow
def test_resolved_width_is_the_closest_and_the_recorded_deviation_is_real(requested, measure):
    matching = match_models([requested], measure=measure, reference=REFERENCE, context=CONTEXT)
    [entry] = matching.models
    member = family_member(entry.model)
    assert entry.matched and member is not None and entry.requested == requested
    assert (member.spec.name, member.depth) == (family_member(requested).spec.name, family_member(requested).depth)

    target = _real_cost(REFERENCE, measure)
    assert matching.target == pytest.approx(target, rel=1e-9)
    assert entry.cost == pytest.approx(_real_cost(entry.model, measure, device="cpu"), rel=1e-9)
    assert entry.deviation == pytest.approx((_real_cost(entry.model, measure) - target) / target, rel=1e-9, abs=1e-12)

    # Brute force: every width from 1 up to well past the answer (memory: a window, each estimate costs more).
    widths = (
        range(1, 2 * member.width + 3) if measure != "memory" else range(max(1, member.width - 3), member.width + 4)
    )
    costs = {w: _real_cost(member.with_width(w), measure) for w in widths}
    assert all(costs[a] < costs[b] for a, b in zip(widths, widths[1:], strict=False)), "cost rises with width"
    closest = min(widths, key=lambda w: (abs(costs[w] - target), w))
    assert member.width == closest, (measure, requested, costs, target)
    assert entry.costs[measure] == pytest.approx(entry.cost)


def test_fixed_models_run_unmatched_and_the_reference_need_not_be_selected():
    matching = match_models(["fcn", "unet_w20_d2", "unet_w10_d2"], measure="flops", reference="unet", context=CONTEXT)
    fcn, first, second = matching.models
    assert (fcn.model, fcn.matched) == ("fcn", False)
    assert fcn.deviation == pytest.approx(_real_cost("fcn", "flops") / _real_cost("unet", "flops") - 1, rel=1e-9)
    assert first.model == second.model == "unet_w20_d2" and first.deviation == 0  # unet is unet_w20_d2
    assert matching.resolved == ["fcn", "unet_w20_d2"]  # two requests for one network train it once
    record = matching.as_dict()
    assert json.loads(json.dumps(record)) == record
    assert set(record["models"][1]) == {"requested", "model", "matched", "cost", "deviation", "costs"}
    assert record["models"][1]["costs"]["params"] == 769_023


def test_no_width_within_25_percent_is_refused_naming_the_nearest(monkeypatch):
    list_models()
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    registry.register_family("narrow", width=Knob("width", 4, 6))(registry._FAMILIES["unet"].builder)
    with pytest.raises(ConfigError) as excinfo:
        match_models(["narrow_w5_d2"], measure="params", reference="unet", context=CONTEXT)
    message = str(excinfo.value)
    assert "no width of narrow_w{W}_d2 (W 4–6) gets within 25% of unet's 7.69e+05 parameters" in message
    assert "the nearest is narrow_w6_d2" in message
    with pytest.raises(ModelError, match="width 7 is outside the valid range 4–6 of family narrow"):
        build_model("narrow_w7_d2", in_channels=1, out_channels=1)


def test_closest_width_needs_few_evaluations_and_respects_the_knob():
    calls: list[int] = []

    def cost(width: int) -> float:
        return 3.0 * width**2 + 50.0 * width

    def counted(width: int) -> float:
        calls.append(width)
        return cost(width)

    for target in (1e2, 7e3, 1.234e6, 5e8):
        calls.clear()
        knob = Knob("width", 1, 1024)
        width, value = closest_width(counted, target, knob, start=20)
        assert (width, value) == min(((w, cost(w)) for w in knob.values()), key=lambda p: (abs(p[1] - target), p[0]))
        assert len(set(calls)) == len(calls) <= 10, calls
    width, _ = closest_width(cost, 7e3, Knob("width", 8, 256, step=8), start=20)
    assert width == 40  # 8, 16, …: 40 → 6800, 48 → 9312
    assert closest_width(cost, 1e12, Knob("width", 1, 30), start=2)[0] == 30  # clamped at the knob's end


FAMILY_PLUGIN = """
import torch.nn as nn

def build(*, in_channels, out_channels, channels=8, levels=2):
    layers = [nn.Conv3d(in_channels, channels, 3, padding=1)]
    for level in range(levels):
        layers += [nn.ReLU(), nn.Conv3d(channels, channels, 3, padding=1)]
    return nn.Sequential(*layers, nn.Conv3d(channels, out_channels, 1))

build.segbench_width = ("channels", 2, 64, 2)
build.segbench_depth = ("levels", 1, 3)
build.segbench_grid = ((8, 1), (16, 2))
"""


def test_plugin_family_declares_knobs_lists_its_grid_and_is_matched(plugins):
    from click.testing import CliRunner

    from segbench.cli import main

    plugins.add("segbench-stack", {"stack": "stack_plugin:build"}, module="stack_plugin", source=FAMILY_PLUGIN)
    assert list_models("stack*") == ["stack"]  # from metadata alone
    assert list_models("stack*", load_plugins=True) == ["stack", "stack_w16_d2", "stack_w8_d1"]
    member = family_member("stack_w10_d3")
    assert (member.spec.source, member.width, member.depth, member.spec.width.parameter) == (
        "segbench-stack", 10, 3, "channels")  # fmt: skip
    assert family_member("stack") is None  # the plain name is the builder's defaults, a fixed model
    model = build_model("stack_w10_d3", in_channels=1, out_channels=2)
    assert len(model) == 8 and model[0].out_channels == 10
    with pytest.raises(ModelError, match="width 11 is outside the valid range 2–64 step 2 of family stack"):
        build_model("stack_w11_d3", in_channels=1, out_channels=1)

    listing = CliRunner().invoke(main, ["models", "stack*"])
    assert listing.exit_code == 0, listing.output
    assert [line.split()[0] for line in listing.stdout.splitlines()[2:]] == ["stack", "stack_w16_d2", "stack_w8_d1"]
    families = CliRunner().invoke(main, ["models", "--families"])
    assert "stack_w{W}_d{D}  segbench-stack  channels 2–64 step 2  levels 1–3" in families.stdout

    matching = match_models(["stack_w8_d1"], measure="params", reference="stack_w30_d2", context=CONTEXT)
    target = count_parameters(build_model("stack_w30_d2", in_channels=1, out_channels=1))
    costs = {w: count_parameters(build_model(f"stack_w{w}_d1", in_channels=1, out_channels=1)) for w in range(2, 65, 2)}
    closest = min(costs, key=lambda w: abs(costs[w] - target))
    assert matching.models[0].model == f"stack_w{closest}_d1" and closest not in (2, 8, 64)


def test_model_cost_of_a_patch_the_model_does_not_suit_is_one_clear_error():
    with pytest.raises(ConfigError, match="--patch 16 16 16 does not suit unet_w8_d5, whose input sizes must be "
                                          "divisible by 32"):  # fmt: skip
        model_cost("unet_w8_d5", "memory", CONTEXT)


def test_match_flags_are_validated():
    from segbench.config import RunConfig

    with pytest.raises(ModelError, match="--match-to vnet: unknown model 'vnet'; did you mean 'unet'?"):
        match_models(["unet_w20_d3"], measure="flops", reference="vnet", context=CONTEXT)

    with pytest.raises(ConfigError, match="--match needs --match-to MODEL"):
        RunConfig(match="flops")
    with pytest.raises(ConfigError, match="--match-to needs --match"):
        RunConfig(match_to="unet")
    with pytest.raises(ConfigError, match="--match must be flops, params or memory"):
        RunConfig(match="speed", match_to="unet")


@pytest.mark.slow
def test_matched_run_through_the_console_script(tiny_task: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "segbench", "run", "--data", str(tiny_task), "--models", "fcn,fcn_w20_d2",
               "--match", "flops", "--match-to", "unet", "--folds", "2", "--iterations", "2", "--patch", "16", "16",
               "16", "--batch-size", "2", "--num-workers", "0", "--out", str(run_dir), "--quiet"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "fcn_w20_d2 -> fcn_w48_d2: 0.9121 (-0.8%)" in proc.stdout

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["models"] == ["fcn", "fcn_w48_d2"]
    assert manifest["config"]["models"] == ["fcn", "fcn_w20_d2"]
    record = manifest["matching"]
    assert (record["measure"], record["reference"], record["unit"]) == ("flops", "unet", "MFLOP/voxel")
    assert record["target"] == pytest.approx(0.9198)
    assert [(m["requested"], m["model"], m["matched"]) for m in record["models"]] == [
        ("fcn", "fcn", False), ("fcn_w20_d2", "fcn_w48_d2", True)]  # fmt: skip
    jobs = pd.read_csv(run_dir / "jobs.csv")
    assert sorted(set(jobs["model"])) == ["fcn", "fcn_w48_d2"]
    trained = jobs[jobs["model"] == "fcn_w48_d2"]["mflop_per_voxel_train"].iloc[0]
    assert record["models"][1]["deviation"] == pytest.approx((trained - 0.9198) / 0.9198, abs=1e-5)

    report = (run_dir / "report" / "report.md").read_text()
    section = report[report.index("## Compute matching") : report.index("## Per-fold")]
    assert "`--match flops --match-to unet`" in section and "within ±0.8% of the target" in section
    assert "- fcn: -82.6% FLOPs vs the target" in section
    assert "| fcn_w48_d2 | fcn_w20_d2 | yes | 1,950,003 | 0.912 |" in section
    assert "figures/pareto_matched_flops.png" in section and "figures/pareto_matched_memory.png" in section
    assert "; not at matched FLOPs: fcn (-82.6% from the target)." in report
    assert (run_dir / "report" / "figures" / "pareto_matched_params.png").is_file()
    # Resuming re-resolves the same names: nothing to refuse, nothing to rerun.
    resumed = subprocess.run([*command[:3], "run", "--resume", "--out", str(run_dir), "--quiet", "--no-report"],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("build.segbench_width = ('channels', 0, 8)\nbuild.segbench_depth = ('levels', 1, 3)",
         "declares segbench_width=\\('channels', 0, 8\\), not \\(keyword, min, max\\[, step\\]\\)"),
        ("build.segbench_width = ('channels', 2, 8)", "declares segbench_depth=None"),
        ("build.segbench_width = ('channels', 2, 8)\nbuild.segbench_depth = ('levels', 1, 3)\n"
         "build.segbench_grid = ((10, 1),)", "width 10 is outside the valid range 2–8 of family bad"),
    ],
)  # fmt: skip
def test_bad_plugin_family_declarations_are_clear_errors(plugins, attributes, message):
    source = FAMILY_PLUGIN.split("build.segbench_width")[0] + attributes + "\n"
    plugins.add("segbench-bad", {"bad": "bad_family:build"}, module="bad_family", source=source)
    with pytest.raises(ModelError, match=message):
        build_model("bad_w4_d1", in_channels=1, out_channels=1)
