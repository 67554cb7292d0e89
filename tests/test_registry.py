"""Registry: registration rules, lookup errors, wildcards, --models resolution, model_info, optional MONAI."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from segbench import profiling, registry
from segbench.errors import ModelError
from segbench.models import monai_adapters
from segbench.registry import (
    ModelInfo,
    build_model,
    describe_model,
    list_models,
    model_info,
    register_family,
    register_model,
    resolve_models,
    unregister_model,
)

torch.set_num_threads(1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test vanish afterwards (the built-ins stay)."""
    list_models()  # load the built-ins first
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    yield
    describe_model.cache_clear()


def _tiny(*, in_channels: int, out_channels: int, hidden: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv3d(in_channels, hidden, 3, padding=1), nn.Conv3d(hidden, out_channels, 1))


def test_builtins_listed_sorted_with_default_grids():
    names = list_models()
    assert names == sorted(names)
    assert {"fcn", "unet"} <= set(names)
    assert {f"unet_w{w}_d{d}" for w in (10, 20, 40) for d in (2, 3, 4)} <= set(names)
    assert {f"fcn_w{w}_d{d}" for w in (10, 20, 40) for d in (2, 3)} <= set(names)


def test_wildcards_and_comma_separated_patterns():
    assert list_models("unet_w10_*") == ["unet_w10_d2", "unet_w10_d3", "unet_w10_d4"]
    assert list_models("fcn, unet_w40_d?") == ["fcn", "unet_w40_d2", "unet_w40_d3", "unet_w40_d4"]
    assert list_models("nothing*") == []
    assert "unet_w32_d4" not in list_models()  # built on demand, not listed


def test_register_and_build(scratch_registry):
    register_model("tiny", family="toy", divisor=1)(_tiny)
    model = build_model("tiny", in_channels=2, out_channels=3, hidden=5)
    assert model(torch.zeros(1, 2, 3, 4, 5)).shape == (1, 3, 3, 4, 5)
    info = model_info("tiny", in_channels=2, out_channels=3)
    forward = 2 * 2 * 5 * 27 + 2 * 5 * 3  # FLOPs per voxel of the two convolutions
    # Backward: both weight gradients, but only the second conv's input gradient (the input needs none).
    train = forward + forward + 2 * 5 * 3
    params = 2 * 5 * 27 + 5 + 5 * 3 + 3
    assert info == ModelInfo(
        "tiny", "toy", "segbench", params, 1, pytest.approx(forward / 1e6), pytest.approx(train / 1e6)
    )
    assert "tiny" in list_models("t*")


def test_unregister(scratch_registry):
    register_model("tiny", family="toy", divisor=1)(_tiny)
    assert model_info("tiny").params > 0
    unregister_model("tiny")
    assert "tiny" not in list_models()
    with pytest.raises(ModelError, match="unknown model 'tiny'"):
        model_info("tiny")  # the cached description is gone too
    with pytest.raises(ModelError, match="not a registered model"):
        unregister_model("tiny")


def test_duplicate_name_is_an_error(scratch_registry):
    with pytest.raises(ModelError, match="'unet' is already registered"):
        register_model("unet", family="unet", divisor=4)(_tiny)
    with pytest.raises(ModelError, match="family 'unet' is already registered"):
        register_family("unet")(_tiny)
    with pytest.raises(ModelError, match="divisor"):
        register_model("zero", family="toy", divisor=0)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ModelError) as excinfo:
        build_model("unett", in_channels=1, out_channels=1)
    message = str(excinfo.value)
    assert message.startswith("unknown model 'unett'; did you mean 'unet'? choose from: fcn, ")
    assert "unet_w40_d4" in message and "unet_w{W}_d{D}" in message


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ModelError, match=r"'unet' does not accept option\(s\) width; it accepts: norm, upsample"):
        build_model("unet", in_channels=1, out_channels=1, width=32)


def test_any_family_member_builds_by_name():
    model = build_model("unet_w3_d1", in_channels=1, out_channels=2)
    assert model(torch.zeros(2, 1, 2, 4, 6)).shape == (2, 2, 2, 4, 6)
    info = model_info("fcn_w2_d5")
    assert (info.family, info.divisor, info.source) == ("fcn", 32, "segbench")


def test_resolve_models_order_dedupe_and_errors():
    assert resolve_models("unet, fcn_w10_*,unet,unet_w32_d4") == ["unet", "fcn_w10_d2", "fcn_w10_d3", "unet_w32_d4"]
    with pytest.raises(ModelError, match="pattern 'vnet_\\*' matches no model"):
        resolve_models("fcn,vnet_*")
    with pytest.raises(ModelError, match="unknown model 'vnet'"):
        resolve_models("fcn,vnet")
    with pytest.raises(ModelError, match="names no model"):
        resolve_models(" , ")


def test_model_info_is_cached_and_matches_a_real_count():
    info = model_info("unet_w10_d2")
    assert model_info("unet_w10_d2") is info
    model = build_model("unet_w10_d2", in_channels=1, out_channels=1)
    assert info.params == sum(p.numel() for p in model.parameters())
    flops = profiling.count_flops(model, (1, 1, 8, 12, 16), train_step=False)
    assert info.mflop_per_voxel_forward == pytest.approx(flops / (8 * 12 * 16) / 1e6)
    assert info.mflop_per_voxel_train > 2 * info.mflop_per_voxel_forward


def test_model_info_falls_back_to_cpu_when_meta_fails(scratch_registry):
    def data_dependent(*, in_channels: int, out_channels: int) -> nn.Module:
        torch.ones(1).item()  # impossible on the meta device
        return _tiny(in_channels=in_channels, out_channels=out_channels)

    register_model("datadep", family="toy", divisor=2)(data_dependent)
    assert model_info("datadep").params == 5 * 27 + 5 + 5 + 1


def test_model_info_of_a_model_whose_forward_fails(scratch_registry, caplog):
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            raise RuntimeError("broken on purpose")

    register_model("broken", family="toy", divisor=4)(lambda *, in_channels, out_channels: Broken())
    info = model_info("broken")  # described (the runner needs the divisor); its job is where it fails
    assert (info.params, info.divisor) == (3, 4)
    assert math.isnan(info.mflop_per_voxel_forward) and math.isnan(info.mflop_per_voxel_train)
    assert "broken on purpose" in caplog.text


def test_monai_registration_skips_without_monai(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)  # `import monai` now raises ImportError
    assert not monai_adapters.monai_available()
    assert monai_adapters.register_monai_models() == []


def test_listing_does_not_import_monai_and_monai_is_optional():
    # A fresh interpreter: listing must not import MONAI (slow, optional); then, with `import monai` failing
    # and the registry reloaded from scratch, segbench lists and builds its own models and no monai_* ones.
    script = textwrap.dedent(
        """
        import sys
        from segbench import profiling, registry
        registry.list_models()
        assert "monai" not in sys.modules, "listing imported monai"
        sys.modules["monai"] = None
        for name in [m for m in sys.modules if m.startswith("segbench.models")]:
            del sys.modules[name]
        registry._MODELS.clear(), registry._FAMILIES.clear()
        registry._builtins_loaded = False
        names = registry.list_models()
        assert "unet" in names and not [n for n in names if n.startswith("monai_")], names
        registry.build_model("unet", in_channels=1, out_channels=1)
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_monai_models_registered_when_installed():
    pytest.importorskip("monai")
    names = list_models("monai_*")
    assert {"monai_unet", "monai_basicunet", "monai_segresnet", "monai_dynunet"} <= set(names)
    info = model_info("monai_segresnet")
    assert (info.source, info.divisor) == ("monai", 8)


def test_swinunetr_names_the_patch_it_needs_instead_of_torchs_instance_norm_error():
    if "monai_swinunetr" not in list_models("monai_*"):
        pytest.skip("monai_swinunetr needs MONAI and einops")
    from segbench.registry import build_model

    model = build_model("monai_swinunetr", in_channels=1, out_channels=2, feature_size=12)
    with pytest.raises(ValueError, match=r"32x32x32 patch.*--patch 64,64,64"):
        model(torch.zeros(1, 1, 32, 32, 32))
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 1, 64, 32, 32)).shape == (1, 2, 64, 32, 32)
