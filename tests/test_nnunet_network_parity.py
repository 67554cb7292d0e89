"""nnU-Net's networks in segbench's registry against the real nnU-Net 2.8.1: the same plans file gives the same network.

For two real-sized datasets of tests/planner_datasets.py (abdominal CT: anisotropic, 3 classes; brain MRI: isotropic,
2 channels, 4 classes) and each of nnU-Net's four planners, the plans file is made twice: by segbench's planner and, in
the reference interpreter, by nnU-Net's own planner (from the same fingerprint). nnU-Net's ``get_network_from_plans``
builds every file's ``3d_fullres`` network with deep supervision on and off; segbench builds the matching registry
model (``nnunet_plain`` for nnUNetPlans, ``nnunet_resenc_m/l/xl`` for the ResEnc plans) from the same file. The
parameter counts must be equal.

Tier: ``pytest -m nnunet tests/test_nnunet_network_parity.py`` (skips with the reason without the reference
interpreter, and without dynamic-network-architectures in segbench's environment).
"""

from __future__ import annotations

import json

import pytest
from nnunet_ref import run_nnunet_json, skip_without_nnunet
from planner_datasets import FINGERPRINTS, plan_fingerprint, write_fingerprint_datasets

pytestmark = pytest.mark.nnunet

CASES = ("ct_abdomen", "brain_mri")
#: segbench's preset -> the registry model built from its plans file.
MODELS = {"nnunet": "nnunet_plain", "resenc-m": "nnunet_resenc_m", "resenc-l": "nnunet_resenc_l",
          "resenc-xl": "nnunet_resenc_xl"}  # fmt: skip

REFERENCE = r"""
import json, sys
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

request = json.loads(sys.argv[1])
planners = {"nnunet": ExperimentPlanner, "resenc-m": nnUNetPlannerResEncM, "resenc-l": nnUNetPlannerResEncL,
            "resenc-xl": nnUNetPlannerResEncXL}
files = {}
for case, name in request["datasets"].items():
    for preset, cls in planners.items():
        planner = cls(name)
        planner.plan_experiment()
        files[f"nnunet/{case}/{preset}"] = join(nnUNet_preprocessed, name, planner.plans_identifier + ".json")
        files[f"segbench/{case}/{preset}"] = request["segbench"][case][preset]
out = {}
for label, path in files.items():
    case = label.split("/")[1]
    config = PlansManager(path).get_configuration("3d_fullres")
    params = {}
    for deep_supervision in (True, False):
        with torch.device("meta"):  # parameters without memory: the counts are what matter
            net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                         config.network_arch_init_kwargs_req_import, request["channels"][case],
                                         request["classes"][case], allow_init=True, deep_supervision=deep_supervision)
        params[str(deep_supervision)] = sum(p.numel() for p in net.parameters())
    out[label] = {"path": path, "params": params, "class": config.network_arch_class_name}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Per plans file (``{source}/{case}/{preset}``): its path, nnU-Net's class name and parameter counts."""
    pytest.importorskip("dynamic_network_architectures")
    skip_without_nnunet()
    from segbench.plans import write_plan

    tmp = tmp_path_factory.mktemp("networks")
    names, env = write_fingerprint_datasets(tmp, CASES, first_id=700)
    ours = {case: {preset: str(write_plan(plan_fingerprint(case, preset), tmp / "sb" / f"{case}-{preset}.json")[0])
                   for preset in MODELS} for case in CASES}  # fmt: skip
    request = {"datasets": names, "segbench": ours, "channels": {c: len(FINGERPRINTS[c][0]) for c in CASES},
               "classes": {c: FINGERPRINTS[c][1] for c in CASES}}  # fmt: skip
    return run_nnunet_json(REFERENCE, json.dumps(request), env=env)


def _segbench_params(model: str, path: str, *, channels: int, classes: int, deep_supervision: bool) -> int:
    import torch

    from segbench.plans.network import read_network_plan
    from segbench.registry import build_model

    with torch.device("meta"):
        network = build_model(model, in_channels=channels, out_channels=classes, plan=read_network_plan(path),
                              deep_supervision=deep_supervision)  # fmt: skip
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize("source", ["segbench", "nnunet"])
@pytest.mark.parametrize("preset", list(MODELS))
@pytest.mark.parametrize("case", CASES)
def test_parameter_counts_equal_nnunets(reference, case, preset, source):
    from segbench.plans import get_preset
    from segbench.registry import model_info

    ref = reference[f"{source}/{case}/{preset}"]
    assert ref["class"] == get_preset(preset).network_class_name
    channels, classes = len(FINGERPRINTS[case][0]), FINGERPRINTS[case][1]
    for deep_supervision in (True, False):
        ours = _segbench_params(MODELS[preset], ref["path"], channels=channels, classes=classes,
                                deep_supervision=deep_supervision)  # fmt: skip
        assert ours == ref["params"][str(deep_supervision)], (deep_supervision, ours, ref["params"])
    from segbench.plans.network import read_network_plan

    info = model_info(MODELS[preset], in_channels=channels, out_channels=classes, plan=read_network_plan(ref["path"]))
    assert info.params == ref["params"]["False"]
