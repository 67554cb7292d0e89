"""Sliding-window inference on tiny volumes with real (tiny) Conv3d models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from segbench import precision
from segbench.errors import ConfigError, ModelError
from segbench.inference import gaussian_importance_map, logits_to_labels, sliding_window_predict, window_starts


def _seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p)
    return module.eval()


def pointwise_model(in_ch: int = 1, out_ch: int = 2) -> nn.Module:
    # A 1x1x1 convolution sees no context: every window predicts exactly the same logits at a voxel,
    # so any correct blend equals a whole-volume forward pass.
    return _seeded(nn.Conv3d(in_ch, out_ch, kernel_size=1))


def context_model(in_ch: int = 1, out_ch: int = 2) -> nn.Module:
    # Zero padding makes window borders differ from the window centre: blending is visible.
    return _seeded(
        nn.Sequential(nn.Conv3d(in_ch, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, out_ch, 3, padding=1))  # fmt: skip
    )


def _image(shape, channels: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn((channels, *shape), generator=torch.Generator().manual_seed(seed))


def _full(model, image):
    with torch.no_grad():
        return model(image[None])[0]


# --- Gaussian map ---------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [(8, 8, 8), (5, 12, 7), (1, 16, 2)])
def test_gaussian_map_shape_peak_positive_and_flip_symmetric(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == patch and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0)
    assert g.min().item() > 0
    for axes in [(0,), (1,), (2,), (0, 1, 2)]:
        assert torch.equal(g, torch.flip(g, axes))


def test_gaussian_map_peaks_at_centre_and_narrows_with_sigma():
    g = gaussian_importance_map((9, 9, 9))
    assert g[4, 4, 4] == 1.0 and g[0, 4, 4] < g[2, 4, 4] < g[4, 4, 4]
    assert gaussian_importance_map((9, 9, 9), sigma_scale=0.05)[2, 4, 4] < g[2, 4, 4]
    with pytest.raises(ConfigError):
        gaussian_importance_map((9, 9, 0))


# --- window placement ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 8, 9, 17, 31, 64])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_window_starts_cover_axis_flush_with_requested_overlap(size, overlap):
    patch = 8
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(size - patch, 0)
    assert starts == sorted(set(starts))
    # Neighbours overlap by at least the requested fraction (up to one voxel of rounding), hence no gaps.
    assert all(1 <= b - a < patch * (1 - overlap) + 1 for a, b in itertools.pairwise(starts))


def test_window_starts_rejects_bad_overlap():
    with pytest.raises(ConfigError, match="overlap"):
        window_starts(20, 8, 1.0)


# --- sliding_window_predict ------------------------------------------------------------------------


def test_single_window_equals_whole_volume_forward():
    model = context_model()
    image = _image((16, 16, 16))
    out = sliding_window_predict(model, image, patch_size=(16, 16, 16))
    assert out.shape == (2, 16, 16, 16) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, _full(model, image))


@pytest.mark.parametrize("gaussian", [True, False])
@pytest.mark.parametrize("shape", [(17, 23, 19), (16, 9, 31)])
def test_every_voxel_covered_on_odd_shapes(shape, gaussian):
    # An uncovered voxel would have zero weight and come out NaN or wrong.
    model = pointwise_model(in_ch=2, out_ch=3)
    image = _image(shape, channels=2)
    out = sliding_window_predict(model, image, patch_size=(8, 6, 8), overlap=0.3, batch_size=5, gaussian=gaussian)
    assert out.shape == (3, *shape)
    torch.testing.assert_close(out, _full(model, image))


def test_image_smaller_than_patch_is_padded_and_cropped():
    image = _image((5, 20, 7))
    patch = (8, 8, 8)
    out = sliding_window_predict(pointwise_model(), image, patch_size=patch)
    torch.testing.assert_close(out, _full(pointwise_model(), image))
    # With context, the result must equal a forward pass on the zero-padded image (centred), cropped back.
    model = context_model()
    out = sliding_window_predict(model, image, patch_size=(8, 20, 20))
    padded = torch.nn.functional.pad(image, (6, 7, 0, 0, 1, 2))
    torch.testing.assert_close(out, _full(model, padded)[:, 1:6, :, 6:13])


def test_gaussian_blend_of_two_windows_matches_hand_computation():
    class WindowMean(nn.Module):
        # Every voxel of a window gets the window's mean input: two windows give two different values.
        def forward(self, x):
            return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x).clone()

    w = torch.arange(12, dtype=torch.float32)
    image = w.expand(1, 8, 8, 12).clone()
    out = sliding_window_predict(WindowMean(), image, patch_size=(8, 8, 8), overlap=0.5)
    assert window_starts(12, 8, 0.5) == [0, 4]
    g = gaussian_importance_map((8, 8, 8))
    for d, h, x in [(0, 0, 5), (3, 4, 4), (7, 2, 7)]:
        g0, g1 = g[d, h, x], g[d, h, x - 4]
        expected = (3.5 * g0 + 7.5 * g1) / (g0 + g1)
        assert out[0, d, h, x].item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(out[0, :, :, :4], torch.full((8, 8, 4), 3.5))
    torch.testing.assert_close(out[0, :, :, 8:], torch.full((8, 8, 4), 7.5))


def test_batch_size_invariance():
    model = context_model()
    image = _image((20, 18, 21))
    ref = sliding_window_predict(model, image, patch_size=(8, 8, 8), batch_size=1)
    for batch_size in (3, 64):
        out = sliding_window_predict(model, image, patch_size=(8, 8, 8), batch_size=batch_size)
        # Batched convolutions may pick other kernels: equal up to float32 rounding of logits ~10 in size.
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # Blending is real: the result differs from a whole-volume pass because windows see less context.
    assert not torch.allclose(ref, _full(model, image), atol=1e-3)


def _flip_symmetric_model() -> nn.Module:
    conv = _seeded(nn.Conv3d(1, 2, 3, padding=1))
    with torch.no_grad():
        k = conv.weight
        conv.weight.copy_(sum(torch.flip(k, axes) for n in range(4) for axes in itertools.combinations((2, 3, 4), n)))
    return conv


def test_mirroring_leaves_flip_equivariant_model_unchanged():
    model = _flip_symmetric_model()
    image = _image((12, 10, 14))
    plain = sliding_window_predict(model, image, patch_size=(8, 8, 8))
    mirrored = sliding_window_predict(model, image, patch_size=(8, 8, 8), mirror=True)
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-5)


def test_mirroring_averages_the_eight_flips():
    model = context_model()
    image = _image((8, 8, 8))
    mirrored = sliding_window_predict(model, image, patch_size=(8, 8, 8), mirror=True)
    expected = torch.stack(
        [
            torch.flip(_full(model, torch.flip(image, [a + 1 for a in axes])), [a + 1 for a in axes])
            for n in range(4)
            for axes in itertools.combinations(range(3), n)
        ]
    ).mean(0)
    torch.testing.assert_close(mirrored, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mirrored, _full(model, image), atol=1e-3)


def test_restores_training_mode_and_accepts_numpy():
    model = pointwise_model().train()
    image = _image((8, 8, 8)).numpy()
    out = sliding_window_predict(model, image, patch_size=(8, 8, 8))
    assert model.training
    torch.testing.assert_close(out, _full(model.eval(), torch.from_numpy(image)))


def test_wrong_model_output_raises_model_error():
    class Shrinks(nn.Module):
        def forward(self, x):
            return x[:, :, 1:]

    with pytest.raises(ModelError, match="Shrinks"):
        sliding_window_predict(Shrinks(), _image((8, 8, 8)), patch_size=(8, 8, 8))

    class ReturnsList(nn.Module):
        def forward(self, x):
            return [x]

    with pytest.raises(ModelError, match="list"):
        sliding_window_predict(ReturnsList(), _image((8, 8, 8)), patch_size=(8, 8, 8))


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"patch_size": (8, 8)}, ConfigError),
        ({"patch_size": (8, 8, 8), "batch_size": 0}, ConfigError),
        ({"patch_size": (8, 8, 8), "overlap": -0.1}, ConfigError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        sliding_window_predict(pointwise_model(), _image((8, 8, 8)), **kwargs)
    with pytest.raises(ValueError, match="C, D, H, W"):
        sliding_window_predict(pointwise_model(), torch.zeros(8, 8, 8), patch_size=(8, 8, 8))


# Reduced precision errors scale with the logits' range (N(0, 1) weights: |logits| reach ~170 here), so an
# absolute tolerance is wrong for any of them: bf16 keeps 8 significant bits, fp16 11, TF32 (cuDNN's default for fp32
# convolutions on Ampere and newer) 11.
_RANGE_TOLERANCE = {"bf16": 0.02, "fp16": 0.004, "fp32": 0.004}


def _assert_close_for_precision(out: torch.Tensor, ref: torch.Tensor, precision_name: str) -> None:
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == ref.shape
    assert (out - ref).abs().max() <= _RANGE_TOLERANCE[precision_name] * ref.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("precision_name", ["fp32", "fp16", "bf16"])
def test_cuda_autocast_close_to_cpu(precision_name, mirror):
    image = _image((20, 20, 20))
    ref = sliding_window_predict(context_model(), image, patch_size=(8, 8, 8), mirror=mirror)
    model = precision.to_memory_format(context_model().cuda(), "channels_last")  # as training leaves it
    out = sliding_window_predict(model, image, patch_size=(8, 8, 8), device="cuda", precision=precision_name,
                                 memory_format="channels_last", mirror=mirror)  # fmt: skip
    _assert_close_for_precision(out, ref, precision_name)


def test_bf16_channels_last_on_cpu_is_close_to_fp32_and_accumulates_in_fp32():
    image = _image((20, 20, 20))
    ref = sliding_window_predict(context_model(), image, patch_size=(8, 8, 8))
    model = precision.to_memory_format(context_model(), "channels_last")
    out = sliding_window_predict(model, image, patch_size=(8, 8, 8), precision="bf16", memory_format="channels_last")
    assert not torch.equal(out, ref)  # bf16 really ran
    _assert_close_for_precision(out, ref, "bf16")
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        sliding_window_predict(model, image, patch_size=(8, 8, 8), precision="auto")


# --- logits_to_labels ------------------------------------------------------------------------------


def test_logits_to_labels_sigmoid_for_one_channel():
    logits = torch.tensor([-2.0, -0.1, 0.0, 0.1, 3.0]).view(1, 1, 1, 5)
    labels = logits_to_labels(logits)
    assert labels.dtype == np.uint8 and labels.shape == (1, 1, 5)
    assert labels.ravel().tolist() == [0, 0, 0, 1, 1]


def test_logits_to_labels_argmax_for_several_channels():
    logits = torch.zeros(3, 2, 1, 1)
    logits[2, 0] = 1.0
    logits[1, 1] = 0.5
    assert logits_to_labels(logits).ravel().tolist() == [2, 1]
    with pytest.raises(ValueError):
        logits_to_labels(torch.zeros(2, 2, 2))
