"""nnU-Net's networks in the registry (segbench/models/nnunet_networks.py), the plan they are built from
(segbench/plans/network.py) and the divisor-versus-patch refusal (segbench/patch_advice.py).

Tests that build a network skip without dynamic-network-architectures (``pip install 'segbench[nnunet]'``); the
parameter-count parity with nnU-Net's own ``get_network_from_plans`` is in tests/test_nnunet_network_parity.py.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from planner_datasets import FINGERPRINTS, plan_fingerprint

from segbench import registry
from segbench.errors import ConfigError, ModelError
from segbench.models import nnunet_networks
from segbench.patch_advice import check_patch_fits, nearest_fitting_patch
from segbench.plans.network import (
    NetworkPlan,
    network_architecture_for,
    network_plan_from_experiment,
    read_network_plan,
)
from segbench.registry import (
    build_model,
    has_deep_supervision,
    input_divisors,
    list_models,
    model_info,
    needs_plan,
    unavailable_models,
)

NETWORKS = ("nnunet_plain", "nnunet_resenc_m", "nnunet_resenc_l", "nnunet_resenc_xl")
NEEDS_PLAN = "needs a plan: pass --plans FILE or --recipe nnunet"
# Spacing 2 x 1 x 1 mm, patch 16 x 32 x 32: nnU-Net's rule gives 4 stages, strides (1,1,1), (1,2,2), (2,2,2), (2,2,2).
TINY = NetworkPlan(patch_size=(16, 32, 32), spacing=(2.0, 1.0, 1.0), origin="a tiny test plan")


@pytest.fixture
def dna():
    return pytest.importorskip("dynamic_network_architectures")


def test_registry_declares_plans_and_deep_supervision(dna):
    assert set(NETWORKS) <= set(list_models("nnunet_*"))
    for name in NETWORKS:
        assert needs_plan(name) and has_deep_supervision(name)
    for name in ("fcn", "unet", "unet_w20_d3"):
        assert not needs_plan(name) and not has_deep_supervision(name)


@pytest.mark.parametrize("name", NETWORKS)
def test_refused_without_a_plan(dna, name):
    with pytest.raises(ModelError, match=NEEDS_PLAN):
        build_model(name, in_channels=1, out_channels=2)
    with pytest.raises(ModelError, match=NEEDS_PLAN):
        model_info(name)


def test_deep_supervision_refused_for_a_model_without_it():
    with pytest.raises(ModelError, match="'unet' has no deep-supervision outputs"):
        build_model("unet", in_channels=1, out_channels=2, deep_supervision=True)
    # A plan is accepted (and ignored) by every model, so a run can pass it to all of them.
    assert isinstance(build_model("unet", in_channels=1, out_channels=2, plan=TINY), torch.nn.Module)


def test_unavailable_without_dynamic_network_architectures(monkeypatch):
    list_models()
    monkeypatch.setattr(registry, "_MODELS", {k: v for k, v in registry._MODELS.items() if k not in NETWORKS})
    monkeypatch.setattr(registry, "_UNAVAILABLE", dict(registry._UNAVAILABLE))
    monkeypatch.setattr(nnunet_networks, "dna_available", lambda: False)
    assert nnunet_networks.register_nnunet_networks() == []
    reasons = unavailable_models()
    for name in NETWORKS:
        assert "dynamic-network-architectures" in reasons[name] and "pip install 'segbench[nnunet]'" in reasons[name]
    with pytest.raises(ModelError, match="'nnunet_plain' is not available here: it needs dynamic-network-arch"):
        build_model("nnunet_plain", in_channels=1, out_channels=2, plan=TINY)


@pytest.mark.parametrize("name", ["nnunet_plain", "nnunet_resenc_m"])
def test_forward_shapes_and_deep_supervision_outputs(dna, name):
    torch.manual_seed(0)
    x = torch.randn(2, 2, *TINY.patch_size)
    plain = build_model(name, in_channels=2, out_channels=3, plan=TINY)
    assert plain(x).shape == (2, 3, 16, 32, 32)  # training mode, no deep supervision: one tensor
    supervised = build_model(name, in_channels=2, out_channels=3, plan=TINY, deep_supervision=True)
    outputs = supervised(x)
    assert isinstance(outputs, list)
    # Full resolution first; entry k is downsampled by the product of strides 0..k: (1,1,1), (1,2,2), (2,4,4).
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 32, 32), (2, 3, 16, 16, 16), (2, 3, 8, 8, 8)]
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in supervised.parameters())
    supervised.eval()
    with torch.no_grad():
        assert supervised(x).shape == (2, 3, 16, 32, 32)  # eval mode: the full-resolution logits alone
    supervised.train()
    assert isinstance(supervised(x), list)
    # The segmentation heads of every stage exist either way (nnU-Net's convention): equal parameter counts.
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in supervised.parameters())


def test_model_info_with_a_plan(dna):
    info = model_info("nnunet_resenc_m", in_channels=1, out_channels=2, plan=TINY)
    built = build_model("nnunet_resenc_m", in_channels=1, out_channels=2, plan=TINY)
    assert info.params == sum(p.numel() for p in built.parameters())
    assert (info.axis_divisors, info.divisor, info.patch) == ((4, 8, 8), 8, (16, 32, 32))
    assert info.mflop_per_voxel_train > info.mflop_per_voxel_forward > 0
    assert input_divisors("nnunet_plain", plan=TINY) == (4, 8, 8)
    # ResEnc M, L and XL are one network at one patch.
    assert model_info("nnunet_resenc_xl", in_channels=1, out_channels=2, plan=TINY).params == info.params
    assert model_info("nnunet_plain", in_channels=1, out_channels=2, plan=TINY).params != info.params
    # Other models: the FLOPs are counted at the plan's patch when it fits.
    assert model_info("unet", plan=TINY).patch == (16, 32, 32)
    assert model_info("unet_w10_d6", plan=TINY).patch is None


@pytest.mark.parametrize("preset", ["nnunet", "resenc-m", "resenc-l", "resenc-xl"])
@pytest.mark.parametrize("case", list(FINGERPRINTS))
def test_derived_architecture_equals_the_planners(case, preset):
    """Without the plan's own entry, the architecture derived from its patch and spacing is the planner's entry."""
    from segbench.plans import get_preset

    plan = network_plan_from_experiment(plan_fingerprint(case, preset))
    own = plan.architecture
    assert network_architecture_for(plan, get_preset(preset)) == own
    assert network_architecture_for(dataclasses.replace(plan, architecture_json=""), get_preset(preset)) == own
    other = "resenc-m" if preset == "nnunet" else "nnunet"
    derived = network_architecture_for(plan, get_preset(other))
    assert derived["network_class_name"] == get_preset(other).network_class_name
    assert derived["arch_kwargs"]["strides"] == own["arch_kwargs"]["strides"]  # same patch: same topology


def test_read_network_plan_and_with_patch(tmp_path):
    from segbench.plans import plans_to_json

    path = tmp_path / "plans.json"
    path.write_text(json.dumps(plans_to_json(plan_fingerprint("cardiac", "resenc-m"))))
    plan = read_network_plan(path)
    assert plan.plans_name == "nnUNetResEncUNetMPlans" and plan.architecture is not None
    assert hash(plan) == hash(read_network_plan(path))
    assert plan.with_patch(plan.patch_size) is plan
    assert plan.with_patch((8, 64, 64)).architecture is None  # the entry's topology was for the planned patch
    with pytest.raises(ConfigError, match="--configuration 2d_wide is not in the plans file"):
        read_network_plan(path, "2d_wide")
    with pytest.raises(ConfigError, match="needs a 3D patch"):
        read_network_plan(path, "2d")


def test_nearest_fitting_patch():
    assert nearest_fitting_patch((40, 100, 100), (16, 16, 16)) == (32, 96, 96)
    assert nearest_fitting_patch((8, 5, 50), (16, 4, 32)) == (16, 4, 64)
    assert nearest_fitting_patch((48, 64, 64), (16, 16, 16)) == (48, 64, 64)


def test_patch_that_a_divisor_does_not_divide_is_refused_with_the_nearest_fit():
    check_patch_fits(["fcn", "unet_w20_d4"], (48, 64, 64))
    with pytest.raises(ConfigError) as caught:
        check_patch_fits(["fcn", "unet_w20_d4"], (40, 64, 64))
    message = str(caught.value)
    assert "the plan's patch 40 x 64 x 64 does not fit every model (unet_w20_d4 needs multiples of 16)" in message
    assert "the nearest patch that fits them all is 32 x 64 x 64: pass --patch 32 64 64" in message


def test_plan_built_network_checked_per_axis(dna):
    check_patch_fits(["nnunet_plain", "unet"], TINY.patch_size, plan=TINY)
    with pytest.raises(ConfigError, match=r"nnunet_plain needs multiples of 4 x 8 x 8 per axis.*--patch 16 32 32"):
        check_patch_fits(["nnunet_plain"], (16, 30, 32), plan=TINY, source="--patch")


def test_cli_lists_networks_of_a_plan(dna, tmp_path):
    from segbench.cli import main

    path = tmp_path / "plans.json"
    doc = {"plans_name": "tiny", "configurations": {"3d_fullres": {"patch_size": [16, 32, 32], "spacing": [2, 1, 1]}}}
    path.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, ["models", "nnunet_plain,nnunet_resenc_m,unet,unet_w10_d6", "--plans", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[-4:] == ["GFLOP/patch", "fwd", "GFLOP/patch", "train"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"nnunet_plain", "nnunet_resenc_m", "unet", "unet_w10_d6"}
    info = model_info("nnunet_plain", plan=read_network_plan(path))
    assert rows["nnunet_plain"][3] == f"{info.params:,}" and rows["nnunet_plain"][6] == "4x8x8"
    assert float(rows["nnunet_plain"][-1].replace(",", "")) > float(rows["nnunet_plain"][-2].replace(",", "")) > 0
    assert rows["unet_w10_d6"][-2:] == ["?", "?"]
    assert "unet_w10_d6 does not fit the plan's patch 16 x 32 x 32" in result.stderr
    assert "the nearest patch that fits is 64 x 64 x 64" in result.stderr

    without = CliRunner().invoke(main, ["models", "unet,nnunet_plain"])
    assert without.exit_code == 0, without.output
    assert [line.split()[0] for line in without.stdout.splitlines()[2:]] == ["unet"]
    assert "needs a plan: nnunet_plain (pass --plans FILE to list them" in without.stderr
    refused = CliRunner().invoke(main, ["models", "nnunet_*"])
    assert refused.exit_code != 0 and "need a plan: pass --plans FILE" in refused.output
