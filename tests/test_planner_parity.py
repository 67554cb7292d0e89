"""segbench's planner against the real nnU-Net 2.8.1 planner, field for field, on generated datasets.

For each dataset (tests/planner_datasets.py) the reference interpreter runs nnU-Net's own fingerprint extractor and
its four planners (ExperimentPlanner, nnUNetPlannerResEncM/L/XL); an MSD task is first converted by nnU-Net's own
MSD converter. segbench plans the same folder (the MSD task directly). Every 3d_fullres field nnU-Net decides must
come out equal; nnU-Net must also read segbench's plans file and build its network from it, and that network's
``compute_conv_feature_map_size`` must equal segbench's arithmetic.

Tier: ``pytest -m nnunet tests/test_planner_parity.py`` (skips with the reason without the reference interpreter).
"""

from __future__ import annotations

import json
import math

import pytest
from nnunet_ref import run_nnunet_json, skip_without_nnunet
from planner_datasets import DATASETS, FINGERPRINTS, build, write_fingerprint_datasets

pytestmark = pytest.mark.nnunet

PRESETS = ("nnunet", "resenc-m", "resenc-l", "resenc-xl")

REFERENCE = r"""
import json, os, sys
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

msd_source, name, segbench_plans = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if msd_source:
    from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset
    convert_msd_dataset(msd_source, num_processes=1)
DatasetFingerprintExtractor(name, num_processes=1).run(overwrite_existing=True)
out = {"fingerprint": load_json(join(nnUNet_preprocessed, name, "dataset_fingerprint.json")), "plans": {},
       "segbench_readable": {}, "dataset_json": load_json(join(nnUNet_raw, name, "dataset.json"))}
planners = {"nnunet": ExperimentPlanner, "resenc-m": nnUNetPlannerResEncM, "resenc-l": nnUNetPlannerResEncL,
            "resenc-xl": nnUNetPlannerResEncXL}
dataset_json = load_json(join(nnUNet_raw, name, "dataset.json"))
for key, cls in planners.items():
    planner = cls(name)
    planner.plan_experiment()
    out["plans"][key] = load_json(join(nnUNet_preprocessed, name, planner.plans_identifier + ".json"))
    # nnU-Net reads segbench's plans file and builds the network it describes.
    config = PlansManager(segbench_plans[key]).get_configuration("3d_fullres")
    net = get_network_from_plans(config.network_arch_class_name, config.network_arch_init_kwargs,
                                 config.network_arch_init_kwargs_req_import, len(dataset_json["channel_names"]),
                                 len(dataset_json["labels"]), allow_init=False)
    out["segbench_readable"][key] = {"patch_size": list(config.patch_size), "batch_size": config.batch_size,
                                     "feature_map_size": int(net.compute_conv_feature_map_size(config.patch_size))}
print(json.dumps(out))
"""

#: The 3d_fullres fields nnU-Net decides (issue 23, item 2).
CONFIG_FIELDS = ("spacing", "patch_size", "batch_size", "normalization_schemes", "use_mask_for_norm")
ARCH_FIELDS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_blocks_per_stage",
               "n_conv_per_stage_decoder")  # fmt: skip


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """Per dataset name: (segbench's plans and fingerprint JSON, the reference output); computed once per module."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            skip_without_nnunet()
            try:
                cache[name] = _run(name, tmp_path_factory.mktemp(name))
            except Exception as exc:  # noqa: BLE001 - one failure per dataset, not one rerun per test
                cache[name] = exc
        if isinstance(cache[name], Exception):
            raise cache[name]
        return cache[name]

    return get


def _run(name: str, tmp):
    from segbench.plans import plan_dataset, plans_to_json, write_plan

    raw, src = tmp / "nnUNet_raw", tmp / "source"
    is_msd = DATASETS[name][0].startswith("Task")
    root = build(name, src if is_msd else raw)
    ours, files, fingerprint = {}, {}, None
    for preset in PRESETS:
        plan = plan_dataset(root, preset=preset, fingerprint=fingerprint)
        fingerprint = plan.fingerprint
        ours[preset] = plans_to_json(plan)
        files[preset] = str(write_plan(plan, tmp / "segbench" / f"{preset}.json")[0])
    nnunet_name = ours["nnunet"]["dataset_name"]
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(tmp / "pre"), "nnUNet_results": str(tmp / "res")}
    ref = run_nnunet_json(REFERENCE, str(root) if is_msd else "", nnunet_name, json.dumps(files), env=env)
    return ours, fingerprint.to_json(), ref


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_fingerprint_equals_nnunet(parity, dataset):
    _, fingerprint, ref = parity(dataset)
    theirs = ref["fingerprint"]
    assert fingerprint["spacings"] == theirs["spacings"]
    assert fingerprint["shapes_after_crop"] == theirs["shapes_after_crop"]
    assert fingerprint["median_relative_size_after_cropping"] == theirs["median_relative_size_after_cropping"]
    for channel, props in theirs["foreground_intensity_properties_per_channel"].items():
        for key, value in props.items():
            mine = fingerprint["foreground_intensity_properties_per_channel"][channel][key]
            assert math.isclose(mine, value, rel_tol=1e-6, abs_tol=1e-6), (channel, key, mine, value)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_3d_fullres_equals_nnunet(parity, dataset, preset):
    ours, _, ref = parity(dataset)
    mine, theirs = ours[preset], ref["plans"][preset]
    assert mine["dataset_name"] == theirs["dataset_name"]
    assert mine["transpose_forward"] == theirs["transpose_forward"]
    assert mine["transpose_backward"] == theirs["transpose_backward"]
    assert sorted(mine["configurations"]) == sorted(theirs["configurations"])
    a, b = mine["configurations"]["3d_fullres"], theirs["configurations"]["3d_fullres"]
    for field in CONFIG_FIELDS:
        assert a[field] == b[field], field
    assert a["architecture"]["network_class_name"] == b["architecture"]["network_class_name"]
    for field in ARCH_FIELDS:
        assert a["architecture"]["arch_kwargs"].get(field) == b["architecture"]["arch_kwargs"].get(field), field


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_whole_plans_file_equals_nnunet(parity, dataset, preset):
    """Beyond item 2: every configuration (2d, 3d_lowres when planned, 3d_fullres) and every top-level key."""
    ours, _, ref = parity(dataset)
    mine, theirs = _normalised(ours[preset]), _normalised(ref["plans"][preset])
    assert mine == theirs


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_nnunet_reads_the_plans_file_and_its_network_matches_the_estimate(parity, dataset, preset):
    from segbench.plans import get_preset
    from segbench.plans.planner import feature_map_size
    from segbench.plans.topology import pool_and_conv_props

    ours, _, ref = parity(dataset)
    read = ref["segbench_readable"][preset]
    config = ours[preset]["configurations"]["3d_fullres"]
    assert read["patch_size"] == config["patch_size"] and read["batch_size"] == config["batch_size"]
    topology = pool_and_conv_props(config["spacing"], config["patch_size"])
    num_classes = len(ref["dataset_json"]["labels"])
    assert (
        feature_map_size(get_preset(preset), topology, num_classes=num_classes, max_features=320)[0]
        == (read["feature_map_size"])
    )


def _normalised(plans: dict) -> dict:
    # JSON round trip (tuples -> lists); numbers compared as floats (nnU-Net writes 64.0 where segbench writes 64).
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return value

    return walk(json.loads(json.dumps(plans)))


PLAN_ONLY = r"""
import json, sys
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)

planners = {"nnunet": ExperimentPlanner, "resenc-m": nnUNetPlannerResEncM, "resenc-l": nnUNetPlannerResEncL,
            "resenc-xl": nnUNetPlannerResEncXL}
out = {}
for name in sys.argv[1:]:
    out[name] = {}
    for key, cls in planners.items():
        planner = cls(name)
        planner.plan_experiment()
        out[name][key] = load_json(join(nnUNet_preprocessed, name, planner.plans_identifier + ".json"))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fingerprint_parity(tmp_path_factory):
    """nnU-Net's four planners on every fingerprint of FINGERPRINTS, in one reference run (no images read)."""
    skip_without_nnunet()
    names, env = write_fingerprint_datasets(tmp_path_factory.mktemp("fingerprints"), list(FINGERPRINTS))
    return names, run_nnunet_json(PLAN_ONLY, *names.values(), env=env)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("case", list(FINGERPRINTS))
def test_plans_from_fingerprint_equal_nnunet(fingerprint_parity, case, preset):
    """Real-sized datasets (patch loop, batch rule, 3d_lowres): the whole plans file equals nnU-Net's."""
    from segbench.plans import DatasetFingerprint, get_preset, plan_experiment, plans_to_json

    names, ref = fingerprint_parity
    channels, n_labels, fingerprint = FINGERPRINTS[case]
    plan = plan_experiment(
        DatasetFingerprint.from_json(fingerprint),
        get_preset(preset),
        dataset_name=names[case],
        channel_names=channels,
        num_classes=n_labels,
        num_training=len(fingerprint["spacings"]),
    )
    mine, theirs = _normalised(plans_to_json(plan)), _normalised(ref[names[case]][preset])
    for key in ("spacing", "patch_size", "batch_size"):
        assert mine["configurations"]["3d_fullres"][key] == theirs["configurations"]["3d_fullres"][key], key
    assert mine == theirs
