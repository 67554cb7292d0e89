"""The nnunet recipe's data: nnU-Net's patch sampling, its augmentation settings and pipeline, common random numbers.

The pipeline tests need batchgeneratorsv2 (``segbench[nnunet]``) and skip without it; the sampling rules do not.
Parity with nnU-Net itself is in ``test_nnunet_recipe_parity.py`` (the ``nnunet`` tier).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from msd_factory import prepared_case

from segbench.errors import ConfigError
from segbench.recipes.nnunet_augment import augmentation_settings, deep_supervision_scales, initial_patch_size
from segbench.recipes.nnunet_sampling import (
    class_locations,
    forced_foreground,
    nnunet_batches,
    nnunet_dataset,
    patch_bounds,
    patch_start,
    seeded_global_rngs,
)


def test_foreground_is_forced_on_the_last_positions_of_a_batch_with_pythons_rounding():
    forced = {b: [j for j in range(b) if forced_foreground(j, b)] for b in (1, 2, 3, 4, 5, 12)}
    # round(B * 0.67): 1 -> 1 (none forced), 2 -> 1, 3 -> 2, 4 -> 3, 5 -> 3, 12 -> 8
    assert forced == {1: [], 2: [1], 3: [2], 4: [3], 5: [3, 4], 12: [8, 9, 10, 11]}
    assert [forced_foreground(j, 4, oversample=1.0) for j in range(4)] == [True] * 4
    assert not any(forced_foreground(j, 4, oversample=0.0) for j in range(4))


def test_patch_bounds_follow_the_need_to_pad_rule():
    # No augmentation margin, volume larger than the patch: starts 0 .. size - patch.
    assert patch_bounds((10,), patch=(8,), final_patch=(8,)) == ([0], [2])
    # Volume smaller than the patch: pad 3, floor(-3 / 2) = -2 below, the rest above.
    assert patch_bounds((5,), patch=(8,), final_patch=(8,)) == ([-2], [-1])
    # Initial patch 12 for a final 8: 4 voxels of margin, half of it outside the volume on each side.
    assert patch_bounds((20, 6, 30), patch=(12, 12, 12), final_patch=(8, 8, 8)) == ([-2, -3, -2], [10, -3, 20])


def test_random_patch_starts_cover_exactly_the_bounds():
    rng = np.random.default_rng(0)
    shape, patch, final = (20, 7, 30), (12, 12, 9), (8, 8, 9)
    lower, upper = patch_bounds(shape, patch=patch, final_patch=final)
    starts = np.array([patch_start(rng, shape, patch=patch, final_patch=final, locations=None) for _ in range(3000)])
    assert starts.min(0).tolist() == lower and starts.max(0).tolist() == upper


def test_forced_patch_is_centred_on_a_stored_voxel_clipped_only_from_below():
    rng = np.random.default_rng(1)
    shape, patch = (40, 40, 40), (16, 16, 16)
    for voxel in ([20, 20, 20], [1, 39, 0], [39, 39, 39]):
        locations = {1: np.empty((0, 3), int), 2: np.array([voxel])}  # class 1 absent: never chosen
        start = patch_start(rng, shape, patch=patch, final_patch=patch, locations=locations)
        assert start == [max(0, v - 8) for v in voxel]  # above the random range's top (24) when near the end
        assert all(s <= v < s + p for s, v, p in zip(start, voxel, patch, strict=True))
    # A case without foreground falls back to a random patch.
    empty = {1: np.empty((0, 3), int)}
    lower, upper = patch_bounds(shape, patch=patch, final_patch=patch)
    start = patch_start(rng, shape, patch=patch, final_patch=patch, locations=empty)
    assert all(lo <= s <= hi for lo, s, hi in zip(lower, start, upper, strict=True))


def test_forced_class_is_uniform_over_present_classes_not_voxels():
    rng = np.random.default_rng(2)
    big = np.argwhere(np.ones((10, 10, 10), bool))  # 1000 voxels of class 1
    locations = {1: big, 2: np.array([[50, 50, 50]])}  # one voxel of class 2
    hits = sum(
        patch_start(rng, (60, 60, 60), patch=(4, 4, 4), final_patch=(4, 4, 4), locations=locations) == [48] * 3
        for _ in range(400)
    )
    assert hits == pytest.approx(200, abs=40)


def test_class_locations_keep_small_classes_whole_and_subsample_large_ones():
    classes = np.zeros((30, 30, 30), np.uint8)
    classes[:2, :2, :2] = 2  # 8 voxels
    classes[10:] = 1  # 18 000 voxels
    locations = class_locations(classes, 3, seed=(0, 1))
    assert len(locations[2]) == 8 and len(locations[3]) == 0
    ones = locations[1]
    assert len(ones) == 10_000 and len(np.unique(ones, axis=0)) == 10_000 and (classes[tuple(ones.T)] == 1).all()
    assert (np.diff(np.ravel_multi_index(tuple(ones.T), classes.shape)) > 0).all()  # sorted
    assert np.array_equal(ones, class_locations(classes, 3, seed=(0, 1))[1])  # a fixed subset per seed


def test_augmentation_settings_follow_nnunets_rules():
    iso = augmentation_settings((64, 64, 64))
    assert not iso.dummy_2d and iso.rotation == pytest.approx((-math.pi / 6, math.pi / 6))
    # Rotating a 64-edge by 30° reaches 64 (cos 30° + sin 30°) = 87.4; divided by the smallest scale 0.85.
    assert iso.initial_patch_size == (102, 102, 102) and iso.mirror_axes == (0, 1, 2)
    aniso = augmentation_settings((16, 128, 128))
    assert aniso.dummy_2d and aniso.rotation == pytest.approx((-math.pi, math.pi))
    # Rotation capped at 90°: the 128 edges swap into every axis; 128 / 0.85 = 150.6; the first edge stays 16.
    assert aniso.initial_patch_size == (16, 150, 150)
    assert not augmentation_settings((16, 48, 48)).dummy_2d  # ratio exactly 3 is not above the threshold
    assert initial_patch_size((10, 20, 30), (0.0, 0.0)) == (11, 23, 35)  # no rotation: only the 1 / 0.85 margin
    with pytest.raises(ConfigError, match="3D patch"):
        augmentation_settings((64, 64))


def test_deep_supervision_scales_are_inverse_cumulative_strides_without_the_last():
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert deep_supervision_scales(strides) == [(1.0, 1.0, 1.0), (1.0, 0.5, 0.5), (0.5, 0.25, 0.25)]


def test_seeded_global_rngs_restores_the_callers_state_and_threads():
    np.random.seed(3)
    torch.manual_seed(3)
    threads = torch.get_num_threads()
    expected_np, expected_torch = np.random.random(), torch.rand(1)
    np.random.seed(3)
    torch.manual_seed(3)
    with seeded_global_rngs(42):
        inside = (np.random.random(), torch.rand(1), torch.get_num_threads())
    with seeded_global_rngs(42):
        again = (np.random.random(), torch.rand(1))
    assert inside[0] == again[0] and torch.equal(inside[1], again[1]) and inside[2] == 1
    assert np.random.random() == expected_np and torch.equal(torch.rand(1), expected_torch)
    assert torch.get_num_threads() == threads


# --- the pipeline (batchgeneratorsv2) -------------------------------------------------------------------------------


@pytest.fixture
def cases(tmp_path):
    """Three cases with two foreground labels (values 3 and 1), one 4³ cube each, one case smaller than the patch."""
    rng = np.random.default_rng(0)
    out = []
    for k, shape in enumerate([(40, 36, 30), (44, 40, 28), (20, 40, 16)]):
        label = np.zeros(shape, np.uint8)
        label[3:7, 20:24, 8:12] = 3
        label[12:16, 5:9, 10:14] = 1
        image = (rng.standard_normal(shape) + 4 * (label > 0)).astype(np.float32)
        out.append(prepared_case(tmp_path, image, label, f"c{k}"))
    return out


def _bg2():
    pytest.importorskip("batchgeneratorsv2", reason="the nnunet recipe's augmentation needs segbench[nnunet]")


def _batches(cases, **overrides):
    kwargs = dict(patch_size=(32, 32, 24), batch_size=2, seed=7, iterations=4, foreground_labels=(3, 1),
                  num_workers=0)  # fmt: skip
    return list(nnunet_batches(cases, **{**kwargs, **overrides}))


def test_pipeline_structure_follows_the_dummy_2d_rule():
    _bg2()
    from segbench.recipes.nnunet_augment import training_transforms

    def names(patch, **kwargs):
        pipeline = training_transforms(augmentation_settings(patch), **kwargs)
        return [getattr(t, "transform", t).__class__.__name__ for t in pipeline.transforms]

    intensity = ["GaussianNoiseTransform", "GaussianBlurTransform", "MultiplicativeBrightnessTransform",
                 "ContrastTransform", "SimulateLowResolutionTransform", "GammaTransform", "GammaTransform",
                 "MirrorTransform"]  # fmt: skip
    assert names((32, 32, 24)) == ["SpatialTransform", *intensity, "RemoveLabelTransform"]
    assert names((8, 64, 64), deep_supervision_scales=[(1, 1, 1), (1, 0.5, 0.5)], use_mask_for_norm=[True]) == [
        "Convert3DTo2DTransform", "SpatialTransform", "Convert2DTo3DTransform", *intensity, "MaskImageTransform",
        "RemoveLabelTransform", "DownsampleSegForDSTransform",
    ]  # fmt: skip


def test_batches_have_the_patch_shape_and_class_index_labels(cases):
    _bg2()
    batches = _batches(cases)
    assert len(batches) == 4
    for batch in batches:
        assert batch["image"].shape == (2, 1, 32, 32, 24) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (2, 32, 32, 24) and batch["label"].dtype == torch.uint8
        assert set(batch["label"].unique().tolist()) <= {0, 1, 2}
        assert batch["label"][1].any()  # position 1 of 2 is forced: the cube at the centre survives augmentation
    ds = _batches(cases, deep_supervision_scales=[(1, 1, 1), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)], iterations=1)[0]
    assert [tuple(t.shape) for t in ds["label"]] == [(2, 32, 32, 24), (2, 16, 16, 12), (2, 8, 8, 6)]
    assert all(t.dtype == torch.uint8 for t in ds["label"])


def test_without_augmentation_every_forced_patch_holds_foreground(cases):
    _bg2()
    dataset = nnunet_dataset(cases, patch_size=(16, 16, 16), batch_size=1, seed=1, iterations=40,
                             foreground_labels=(3, 1), oversample=1.0, augment=False)  # fmt: skip
    for i in range(40):
        sample = dataset[i]
        assert sample["image"].shape == (1, 16, 16, 16) and sample["label"].any()


def test_batches_are_common_random_numbers_across_workers_and_resumption(cases):
    _bg2()
    ds = [(1, 1, 1), (0.5, 0.5, 0.5)]
    in_process = _batches(cases, deep_supervision_scales=ds)
    worker = _batches(cases, deep_supervision_scales=ds, num_workers=1)
    resumed = _batches(cases, deep_supervision_scales=ds, num_workers=1, start_iteration=2)
    for a, b in zip(in_process, worker, strict=True):
        assert torch.equal(a["image"], b["image"]) and a["case_id"] == b["case_id"]
        assert all(torch.equal(x, y) for x, y in zip(a["label"], b["label"], strict=True))
    assert len(resumed) == 2
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(in_process[2:], resumed, strict=True))
    other = _batches(cases, deep_supervision_scales=ds, seed=8)
    assert not torch.equal(other[0]["image"], in_process[0]["image"])


def test_loading_in_the_main_process_leaves_the_global_generators_alone(cases):
    _bg2()
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(3), np.random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    _batches(cases, iterations=2)
    assert torch.equal(torch.rand(3), expected[0]) and np.random.random() == expected[1]


def test_bad_arguments_are_config_errors(cases):
    _bg2()
    with pytest.raises(ConfigError, match="no training cases"):
        _batches([])
    with pytest.raises(ConfigError, match="oversampling"):
        _batches(cases, oversample=1.5)
    with pytest.raises(ConfigError, match="iteration 9"):
        _batches(cases, start_iteration=9)
