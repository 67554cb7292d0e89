"""The nnunet recipe's data and loss against the real nnU-Net 2.8.1 (``nnunet`` tier, its own interpreter).

* augmentation: the transform pipeline (classes in order, probabilities, every parameter) equals
  ``nnUNetTrainer.get_training_transforms`` for an isotropic and an anisotropic (dummy-2D) plan, and so do the
  settings nnU-Net derives from the patch (rotation, dummy 2D, initial patch, mirror axes, deep-supervision scales);
  fed the same sample and the same global seeds, both pipelines give the same augmented sample;
* sampling: the oversampled batch positions and the patch bounds equal ``nnUNetDataLoader``'s;
* loss: equals ``DC_and_CE_loss`` / ``DeepSupervisionWrapper`` as ``nnUNetTrainer._build_loss`` builds them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from nnunet_ref import run_nnunet_json

pytestmark = pytest.mark.nnunet

#: Executed in both interpreters: a JSON description of a batchgeneratorsv2 pipeline (classes, every public attribute).
DESCRIBE = r'''
def describe(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return round(value, 12)
    if hasattr(value, "tolist"):
        return describe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v) for k, v in value.items()}
    public = {k: describe(v) for k, v in sorted(vars(value).items()) if not k.startswith("_")}
    return {"class": type(value).__name__, **public}
'''

#: Two plans' 3d_fullres settings: Task04-like isotropic, Task05-like anisotropic (dummy 2D), 1 and 2 channels.
PLANS = {
    "isotropic": {"patch_size": [40, 56, 40], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                  "use_mask_for_norm": [False]},
    "anisotropic": {"patch_size": [20, 320, 256],
                    "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
                    "use_mask_for_norm": [True, False]},
}  # fmt: skip

REFERENCE = (
    DESCRIBE
    + r"""
import json, sys, types
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

plans = json.loads(sys.argv[1])
out = {}
for name, plan in plans.items():
    me = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(
        patch_size=plan["patch_size"], pool_op_kernel_sizes=plan["strides"]),
        enable_deep_supervision=True, print_to_log_file=lambda *a, **k: None)
    rotation, dummy_2d, initial, mirror = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(me)
    scales = nnUNetTrainer._get_deep_supervision_scales(me)
    pipeline = nnUNetTrainer.get_training_transforms(
        plan["patch_size"], rotation, scales, mirror, dummy_2d, use_mask_for_norm=plan["use_mask_for_norm"],
        is_cascaded=False, foreground_labels=[1, 2], regions=None, ignore_label=None)
    out[name] = {"rotation": describe(rotation), "dummy_2d": bool(dummy_2d), "initial": describe(initial),
                 "mirror": describe(mirror), "scales": describe(scales), "pipeline": describe(pipeline),
                 "validation": describe(nnUNetTrainer.get_validation_transforms(scales))}
print(json.dumps(out))
"""
)


def _ours(plan: dict) -> dict:
    pytest.importorskip("batchgeneratorsv2")
    from segbench.recipes import nnunet_augment as aug

    namespace: dict = {}
    exec(DESCRIBE, namespace)  # the same description code as the reference's
    describe = namespace["describe"]
    settings = aug.augmentation_settings(plan["patch_size"])
    scales = aug.deep_supervision_scales(plan["strides"])
    pipeline = aug.training_transforms(settings, deep_supervision_scales=scales,
                                       use_mask_for_norm=plan["use_mask_for_norm"])  # fmt: skip
    return {"rotation": describe(settings.rotation), "dummy_2d": settings.dummy_2d,
            "initial": describe(settings.initial_patch_size), "mirror": describe(settings.mirror_axes),
            "scales": describe(scales), "pipeline": describe(pipeline),
            "validation": describe(aug.validation_transforms(scales))}  # fmt: skip


@pytest.fixture(scope="module")
def reference():
    return run_nnunet_json(REFERENCE, json.dumps(PLANS))


@pytest.mark.parametrize("plan", list(PLANS))
def test_augmentation_settings_equal_nnunets(reference, plan):
    mine, theirs = _ours(PLANS[plan]), reference[plan]
    for key in ("rotation", "dummy_2d", "initial", "mirror", "scales"):
        assert mine[key] == theirs[key], key
    assert mine["dummy_2d"] == (plan == "anisotropic")


@pytest.mark.parametrize("plan", list(PLANS))
def test_training_transforms_equal_nnunets_but_for_the_blur_benchmark(reference, plan):
    mine, theirs = _ours(PLANS[plan])["pipeline"], reference[plan]["pipeline"]
    blurs = [(a["transform"], b["transform"]) for a, b in zip(mine["transforms"], theirs["transforms"], strict=True)
             if b.get("transform", {}).get("class") == "GaussianBlurTransform"]  # fmt: skip
    assert len(blurs) == 1
    ours_blur, their_blur = blurs[0]
    # The one deliberate difference (segbench.recipes.nnunet_augment): timing-dependent FFT choice switched off.
    assert ours_blur.pop("benchmark") is False and their_blur.pop("benchmark") is True
    assert [t["class"] for t in mine["transforms"]] == [t["class"] for t in theirs["transforms"]]
    assert mine == theirs
    assert _ours(PLANS[plan])["validation"] == reference[plan]["validation"]


PATCHES = [[40, 56, 40], [20, 320, 256], [128, 128, 128], [80, 192, 160], [64, 96, 17], [14, 96, 96], [48, 48, 16],
           [17, 34, 51], [96, 160, 160], [28, 256, 256], [112, 112, 112], [56, 40, 200]]  # fmt: skip

SETTINGS_REFERENCE = r"""
import json, sys, types
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
out = []
for patch in json.loads(sys.argv[1]):
    me = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(patch_size=patch),
                               print_to_log_file=lambda *a, **k: None)
    _, dummy_2d, initial, _ = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(me)
    out.append([bool(dummy_2d), [int(v) for v in initial]])
print(json.dumps(out))
"""


def test_initial_patch_sizes_equal_nnunets_for_many_patches():
    from segbench.recipes.nnunet_augment import augmentation_settings

    theirs = run_nnunet_json(SETTINGS_REFERENCE, json.dumps(PATCHES))
    mine = [[s.dummy_2d, list(s.initial_patch_size)] for s in map(augmentation_settings, PATCHES)]
    assert mine == theirs


#: (volume shape, cut patch, final patch) cases for the patch bounds, and batch sizes for the oversampled positions.
BOUNDS = [[[40, 50, 60], [51, 46, 43], [32, 32, 24]], [[20, 40, 16], [51, 46, 43], [32, 32, 24]],
          [[7, 9, 300], [20, 150, 150], [20, 128, 128]], [[5, 5, 5], [8, 8, 8], [8, 8, 8]]]  # fmt: skip

SAMPLING_REFERENCE = r"""
import json, sys, types
import numpy as np
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

bounds, batch_sizes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"bounds": [], "forced": {}}
for shape, patch, final in bounds:
    me = types.SimpleNamespace(need_to_pad=(np.array(patch) - np.array(final)).astype(int), patch_size=patch,
                               has_ignore=False)
    ends = []
    for pick in (lambda lo, hi: lo, lambda lo, hi: hi - 1):  # the lowest and the highest random start
        np.random.randint = pick
        ends.append([int(v) for v in nnUNetDataLoader.get_bbox(me, np.array(shape), False, None)[0]])
    voxel = [int(s) // 3 for s in shape]
    locations = {1: np.array([[0, *voxel]])}
    forced = nnUNetDataLoader.get_bbox(me, np.array(shape), True, locations)[0]
    out["bounds"].append([ends, voxel, [int(v) for v in forced]])
for b in batch_sizes:
    me = types.SimpleNamespace(batch_size=b, oversample_foreground_percent=0.33)
    out["forced"][str(b)] = [j for j in range(b) if nnUNetDataLoader._oversample_last_XX_percent(me, j)]
print(json.dumps(out))
"""


def test_patch_bounds_and_oversampled_positions_equal_nnunets():
    from segbench.recipes.nnunet_sampling import forced_foreground, patch_bounds, patch_start

    batch_sizes = list(range(1, 13))
    theirs = run_nnunet_json(SAMPLING_REFERENCE, json.dumps(BOUNDS), json.dumps(batch_sizes))
    for (shape, patch, final), (ends, voxel, forced) in zip(BOUNDS, theirs["bounds"], strict=True):
        assert list(patch_bounds(shape, patch=patch, final_patch=final)) == ends
        start = patch_start(np.random.default_rng(0), shape, patch=patch, final_patch=final,
                            locations={1: np.array([voxel])})  # fmt: skip
        assert start == forced
    assert {str(b): [j for j in range(b) if forced_foreground(j, b)] for b in batch_sizes} == theirs["forced"]


AUGMENT_REFERENCE = r"""
import sys
import numpy as np, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
import types

folder, seeds = sys.argv[1], int(sys.argv[2])
data = np.load(f"{folder}/input.npz")
patch = [int(v) for v in data["patch"]]
me = types.SimpleNamespace(configuration_manager=types.SimpleNamespace(patch_size=patch, pool_op_kernel_sizes=None),
                           print_to_log_file=lambda *a, **k: None)
rotation, dummy_2d, initial, mirror = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(me)
scales = [[1, 1, 1], [0.5, 0.5, 0.5]]
pipeline = nnUNetTrainer.get_training_transforms(patch, rotation, scales, mirror, dummy_2d, use_mask_for_norm=[False],
                                                 is_cascaded=False, foreground_labels=[1, 2], regions=None,
                                                 ignore_label=None)
out = {}
for seed in range(seeds):
    np.random.seed(seed)
    torch.manual_seed(seed)
    result = pipeline(image=torch.from_numpy(data["image"].copy()), segmentation=torch.from_numpy(data["seg"].copy()))
    out[f"image{seed}"] = result["image"].numpy()
    for k, s in enumerate(result["segmentation"]):
        out[f"seg{seed}_{k}"] = s.numpy()
np.savez(f"{folder}/output.npz", **out)
print("{}")
"""


@pytest.mark.parametrize("patch", [(24, 32, 24), (8, 64, 48)], ids=["isotropic", "dummy-2d"])
def test_same_sample_and_seeds_give_nnunets_augmented_sample(tmp_path, patch):
    pytest.importorskip("batchgeneratorsv2")
    from segbench.recipes import nnunet_augment as aug

    settings = aug.augmentation_settings(patch)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, *settings.initial_patch_size)).astype(np.float32)
    seg = rng.integers(0, 3, settings.initial_patch_size).astype(np.int16)[None]
    seg[:, :2] = -1  # outside the volume
    np.savez(tmp_path / "input.npz", image=image, seg=seg, patch=np.array(patch))
    seeds = 12
    run_nnunet_json(AUGMENT_REFERENCE, str(tmp_path), str(seeds))
    theirs = np.load(tmp_path / "output.npz")
    pipeline = aug.training_transforms(settings, deep_supervision_scales=[(1, 1, 1), (0.5, 0.5, 0.5)])
    for seed in range(seeds):
        np.random.seed(seed)
        torch.manual_seed(seed)
        result = pipeline(image=torch.from_numpy(image.copy()), segmentation=torch.from_numpy(seg.copy()))
        # The blur may take the FFT path in nnU-Net (benchmark=True): equal up to float rounding.
        np.testing.assert_allclose(result["image"].numpy(), theirs[f"image{seed}"], rtol=1e-4, atol=1e-4)
        for k, s in enumerate(result["segmentation"]):
            np.testing.assert_array_equal(s.numpy(), theirs[f"seg{seed}_{k}"])


LOSS_REFERENCE = r"""
import json, sys, types
import numpy as np, torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

data = np.load(sys.argv[1])
n = int(data["n"])
outputs = [torch.from_numpy(data[f"logits{i}"]) for i in range(n)]
targets = [torch.from_numpy(data[f"target{i}"]) for i in range(n)]
out = {}
for batch_dice in (False, True):
    for ds in (False, True):
        me = types.SimpleNamespace(
            label_manager=types.SimpleNamespace(has_regions=False, ignore_label=None),
            configuration_manager=types.SimpleNamespace(batch_dice=batch_dice, pool_op_kernel_sizes=data["strides"]),
            is_ddp=False, enable_deep_supervision=ds, _do_i_compile=lambda: False)
        me._get_deep_supervision_scales = lambda: nnUNetTrainer._get_deep_supervision_scales(me)
        loss = nnUNetTrainer._build_loss(me)
        value = loss(outputs, targets) if ds else loss(outputs[0], targets[0])
        out[f"{batch_dice}-{ds}"] = float(value)
print(json.dumps(out))
"""


def test_loss_equals_nnunets_dice_ce_and_deep_supervision(tmp_path):
    from segbench.recipes.nnunet_loss import nnunet_loss

    generator = torch.Generator().manual_seed(0)
    sizes = [(12, 16, 16), (12, 8, 8), (6, 4, 4)]  # strides (1,1,1), (1,2,2), (2,2,2): three outputs
    strides = np.array([[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]])
    logits = [3 * torch.randn(2, 3, *s, generator=generator) for s in sizes]
    targets = [torch.randint(0, 3, (2, 1, *s), generator=generator) for s in sizes]
    targets[0][1] = 0  # one sample without foreground: per-sample and batch Dice differ
    arrays = {f"logits{i}": t.numpy() for i, t in enumerate(logits)}
    arrays.update({f"target{i}": t.numpy().astype(np.int16) for i, t in enumerate(targets)})
    np.savez(tmp_path / "loss.npz", n=len(sizes), strides=strides, **arrays)
    theirs = run_nnunet_json(LOSS_REFERENCE, str(tmp_path / "loss.npz"))
    labels = [t[:, 0].to(torch.uint8) for t in targets]  # segbench's loader gives (B, *spatial) uint8
    for batch_dice in (False, True):
        single = nnunet_loss(logits[0], labels[0], batch_dice=batch_dice).item()
        deep = nnunet_loss(logits, labels, batch_dice=batch_dice).item()
        assert single == pytest.approx(theirs[f"{batch_dice}-False"], rel=1e-5, abs=1e-6)
        assert deep == pytest.approx(theirs[f"{batch_dice}-True"], rel=1e-5, abs=1e-6)
