"""The planner's pure rules (no nnunetv2 needed): topology, nnU-Net's VRAM proxy, spacing/transpose/normalization,
the fingerprint's crop and sampling, the plans file, and the ``segbench plan`` command.

Parity with the real nnU-Net is in tests/test_planner_parity.py (tier ``nnunet``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from planner_datasets import FINGERPRINTS, build

from segbench.errors import ConfigError
from segbench.plans import DatasetFingerprint, get_preset, plan_experiment, plans_to_json, write_plan
from segbench.plans.fingerprint import nonzero_bounding_box
from segbench.plans.rules import fullres_target_spacing, normalization_schemes, transpose_axes
from segbench.plans.topology import pad_to_multiple, pool_and_conv_props
from segbench.plans.vram import plain_unet_feature_map_size, resenc_unet_feature_map_size

SEGBENCH = str(Path(sys.executable).with_name("segbench"))


def test_isotropic_128_gets_nnunets_six_stage_topology():
    topo = pool_and_conv_props((1.0, 1.0, 1.0), (128, 128, 128))
    assert topo.strides == ((1, 1, 1),) + ((2, 2, 2),) * 5  # 128 -> 4: five poolings, bottleneck edge 4
    assert topo.kernel_sizes == ((3, 3, 3),) * 6
    assert topo.patch_size == (128, 128, 128) and topo.divisible_by == (32, 32, 32)


def test_thick_slices_are_pooled_and_convolved_only_once_in_plane_is_coarse_enough():
    topo = pool_and_conv_props((2.7, 0.7, 0.7), (20, 64, 64))  # the ct_anisotropic dataset's plan
    assert topo.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
    assert topo.kernel_sizes[0] == (1, 3, 3) and topo.kernel_sizes[1] == (3, 3, 3)
    assert topo.patch_size == (20, 64, 64)


def test_pad_to_multiple_keeps_multiples_and_rounds_fractions_up():
    assert pad_to_multiple((64, 37.5, 1), (32, 8, 4)) == (64, 40, 4)


def test_resenc_proxy_reproduces_the_value_nnunet_documents():
    # residual_encoder_unet_planners.py states 558319104 for this network at 128³ (with deep supervision).
    size = resenc_unet_feature_map_size(
        (128, 128, 128),
        features=(32, 64, 128, 256, 320, 320),
        strides=((1, 1, 1),) + ((2, 2, 2),) * 5,
        n_blocks_per_stage=(1, 3, 4, 6, 6, 6),
        n_conv_per_stage_decoder=(1,) * 5,
        num_classes=3,
        deep_supervision=True,
    )
    assert size == 558319104


def test_plain_proxy_counts_encoder_decoder_and_head():
    # Two stages, 2 convs each: encoder 2*8*4³ + 2*16*2³, decoder (2 convs + transposed conv) 3*8*4³, head 2*4³.
    size = plain_unet_feature_map_size(
        (4, 4, 4),
        features=(8, 16),
        strides=((1, 1, 1), (2, 2, 2)),
        n_conv_per_stage=(2, 2),
        n_conv_per_stage_decoder=(2,),
        num_classes=2,
    )
    assert size == 2 * 8 * 64 + 2 * 16 * 8 + 3 * 8 * 64 + 2 * 64


def test_target_spacing_median_and_thick_slice_rule():
    assert list(fullres_target_spacing([(1, 1, 1), (1.2, 1, 1), (1.4, 1, 1)], [(90, 90, 90)] * 3)) == [1.2, 1, 1]
    spacings = [(5.0, 0.7, 0.7), (5.0, 0.7, 0.7), (1.0, 0.7, 0.7), (4.0, 0.7, 0.7)]
    target = fullres_target_spacing(spacings, [(20, 512, 512)] * 4)
    assert target[0] == pytest.approx(np.percentile([5, 5, 1, 4], 10))  # 10th percentile, not the median 4.5
    # Many slices: anisotropic spacing alone keeps the median.
    assert fullres_target_spacing(spacings, [(400, 512, 512)] * 4)[0] == 4.5


def test_transpose_puts_the_coarsest_axis_first():
    assert transpose_axes([0.5, 3.0, 0.5]) == ([1, 0, 2], [1, 0, 2])
    assert transpose_axes([0.7, 0.7, 5.0]) == ([2, 0, 1], [1, 2, 0])


def test_normalization_from_channel_names():
    assert normalization_schemes(("CT", "t1", "noNorm"), 0.5) == (
        ("CTNormalization", "ZScoreNormalization", "NoNormalization"),
        (False, True, False),
    )
    assert normalization_schemes(("MRI",), 0.9) == (("ZScoreNormalization",), (False,))


def test_nonzero_crop_fills_holes_and_spans_all_channels():
    image = np.zeros((2, 10, 10, 10), np.float32)
    image[0, 2:8, 3:7, 3:7] = 1
    image[0, 5, 5, 5] = 0  # a hole inside: still inside the region
    image[1, 9, 5, 5] = 2  # the second channel widens the box
    box, mask = nonzero_bounding_box(image)
    assert box == (slice(2, 10), slice(3, 7), slice(3, 7)) and mask[5, 5, 5]


def test_fingerprint_reads_every_case_in_plan_axis_order(tmp_path):
    from segbench.data.dataset import load_dataset
    from segbench.plans.fingerprint import fingerprint_case

    root = build("mri_isotropic", tmp_path)
    spec = load_dataset(root)
    case = fingerprint_case(spec.training[0], num_samples=50)
    # Array (56, 52, 48) with a 10-voxel zero frame on the first two axes -> reversed and cropped.
    assert case.shape_after_crop == (48, 32, 36) and case.spacing == (1.0, 1.0, 1.0)
    assert case.relative_size_after_crop == pytest.approx(36 * 32 / (56 * 52))
    again = fingerprint_case(spec.training[0], num_samples=50)
    assert np.array_equal(case.samples[0], again.samples[0])  # seeded as nnU-Net: the same sample every time


@pytest.mark.parametrize("case", list(FINGERPRINTS))
def test_fingerprint_json_round_trip_and_plan_structure(case):
    channels, n_labels, doc = FINGERPRINTS[case]
    fingerprint = DatasetFingerprint.from_json(doc)
    assert fingerprint.to_json() == doc
    plan = plan_experiment(fingerprint, get_preset("nnunet"), dataset_name="Dataset999_X", channel_names=channels,
                           num_classes=n_labels, num_training=len(doc["spacings"]))  # fmt: skip
    out = json.loads(json.dumps(plans_to_json(plan)))
    fullres = out["configurations"]["3d_fullres"]
    assert fullres["batch_size"] >= 2
    arch = fullres["architecture"]["arch_kwargs"]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == arch["n_stages"] == len(arch["features_per_stage"])
    divisor = np.prod(arch["strides"], axis=0)
    assert all(p % d == 0 for p, d in zip(fullres["patch_size"], divisor, strict=True))


def test_ct_abdomen_plans_a_lowres_stage_and_shrinks_the_patch():
    channels, n_labels, doc = FINGERPRINTS["ct_abdomen"]
    plan = plan_experiment(DatasetFingerprint.from_json(doc), get_preset("nnunet"), dataset_name="D",
                           channel_names=channels, num_classes=n_labels, num_training=len(doc["spacings"]))  # fmt: skip
    assert list(plan.configurations) == ["2d", "3d_lowres", "3d_fullres"]
    fullres = plan.configurations["3d_fullres"]
    assert fullres.batch_dice and fullres.estimate <= fullres.reference
    assert np.prod(fullres.patch_size) < np.prod(fullres.median_shape)


def test_write_plan_never_overwrites_without_force(tmp_path):
    channels, n_labels, doc = FINGERPRINTS["cardiac"]
    plan = plan_experiment(DatasetFingerprint.from_json(doc), get_preset("resenc-l"), dataset_name="D",
                           channel_names=channels, num_classes=n_labels, num_training=len(doc["spacings"]))  # fmt: skip
    out = tmp_path / "plans.json"
    write_plan(plan, out)
    assert json.loads(out.read_text())["plans_name"] == "nnUNetResEncUNetLPlans"
    assert json.loads((tmp_path / "plans.fingerprint.json").read_text()) == doc
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        write_plan(plan, out)
    write_plan(plan, out, force=True)
    out.unlink()  # a fingerprint left from another plan is refused too
    with pytest.raises(ConfigError, match="plans.fingerprint.json already exists"):
        write_plan(plan, out)


def test_axis_conversions_are_inverse_and_follow_the_transposition():
    from segbench.plans import array_to_configuration_axes, configuration_to_array_axes

    # Array (D, H, W) = (512, 512, 40) with thick W: nnU-Net order (40, 512, 512), coarsest first -> unchanged.
    assert array_to_configuration_axes((0.7, 0.8, 5.0), (0, 1, 2)) == (5.0, 0.8, 0.7)
    # Thick middle axis: plan order (a, thick, c) with transpose_forward [1, 0, 2].
    forward, backward = transpose_axes([0.5, 3.0, 0.6])
    config = array_to_configuration_axes((0.6, 3.0, 0.5), forward)
    assert config == (3.0, 0.5, 0.6) and configuration_to_array_axes(config, backward) == (0.6, 3.0, 0.5)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="resenc-m"):
        get_preset("resenc-s")


@pytest.mark.slow  # fingerprinting samples 10**8 voxels per channel, as nnU-Net: tens of seconds on a loaded CPU
def test_plan_command_writes_plans_and_refuses_to_overwrite(tmp_path):
    root = build("two_channels_msd", tmp_path)
    run = subprocess.run([SEGBENCH, "plan", str(root), "--preset", "resenc-m"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    plans = json.loads((tmp_path / "plans.json").read_text())
    assert plans["dataset_name"] == "Dataset503_TwoChannels"  # the name nnU-Net's MSD conversion gives Task503
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["ZScoreNormalization"] * 2
    for word in ("spacing", "patch", "batch size", "normalization", "stages", "est. memory"):
        assert word in run.stdout
    again = subprocess.run([SEGBENCH, "plan", str(root)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "error: plans.json already exists; pass --force to overwrite it or --out to write elsewhere"
    ]


def test_plan_command_refuses_an_existing_plans_file_before_any_work(tmp_path):
    (tmp_path / "plans.json").write_text("{}")
    run = subprocess.run([SEGBENCH, "plan", "no-such-folder"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 1 and (tmp_path / "plans.json").read_text() == "{}"
    assert "plans.json already exists; pass --force" in run.stderr


def test_plan_command_fit_needs_a_budget(tmp_path):
    run = subprocess.run([SEGBENCH, "plan", str(tmp_path), "--fit", "unet"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1 and "--fit needs --gpu-memory" in run.stderr


@pytest.mark.slow
def test_fit_chooses_a_patch_every_model_fits(tmp_path):
    from segbench.memory import training_step_memory
    from segbench.plans import plan_dataset
    from segbench.plans.fit import fit_plan

    plan = plan_dataset(build("mri_isotropic", tmp_path))
    budget_gb = 0.125  # 128 MiB: below the unfitted patch's need, so the patch must shrink
    fit = fit_plan(plan, ["unet"], gpu_memory_gb=budget_gb)
    fitted = fit.plan.configurations["3d_fullres"]
    assert np.prod(fitted.patch_size) < np.prod(fit.nnunet_patch)
    assert fit.memory["unet"].peak_mb <= budget_gb * 1024
    # Exactly what training_step_memory says at the chosen patch (segbench's array order: plan order reversed).
    again = training_step_memory("unet", in_channels=1, out_channels=1, patch_size=fitted.patch_size[::-1],
                                 batch_size=fitted.batch_size, precision="fp32", memory_format="channels_last",
                                 fake=True)  # fmt: skip
    assert again.peak_mb == fit.memory["unet"].peak_mb
