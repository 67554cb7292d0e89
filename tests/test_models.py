"""Model contract (every registered model), the tutorial's exact networks, analytic FLOPs, family options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ModelError
from segbench.profiling import count_flops
from segbench.registry import build_model, list_models, model_info, needs_plan

torch.set_num_threads(1)

# Odd-but-divisible base shape: three different sizes catch swapped axes.
BASE_SHAPE = (16, 24, 8)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shape_for(divisor: int) -> tuple[int, int, int]:
    # Two voxels along the first axis at the deepest level: instance norm refuses a one-voxel bottleneck in training.
    depth, *rest = (divisor * max(1, math.ceil(side / divisor)) for side in BASE_SHAPE)
    return (max(depth, 2 * divisor), *rest)


# Plan-built networks (nnU-Net's) have their own tests: tests/test_nnunet_networks.py.
@pytest.mark.parametrize("name", [name for name in list_models() if not needs_plan(name)])
@pytest.mark.slow
def test_contract_forward_backward(name):
    torch.manual_seed(0)
    info = model_info(name)
    model = build_model(name, in_channels=2, out_channels=3)
    x = torch.randn(1, 2, *_shape_for(info.divisor))
    logits = model(x)
    assert logits.shape == (1, 3, *x.shape[2:])
    assert torch.isfinite(logits).all()
    logits.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --- the tutorial's networks, written out as in the slides, to compare against ---------------------------


def _tutorial_block(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm3d(c_in),
        nn.Conv3d(c_in, c_mid, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm3d(c_mid),
        nn.Conv3d(c_mid, c_out, 3, padding=1),
        nn.ReLU(),
    )


class TutorialFCN(nn.Module):
    def __init__(self):
        super().__init__()
        self.block0, self.block1, self.block2 = (_tutorial_block(1, 20, 20), _tutorial_block(20, 40, 40),
                                                 _tutorial_block(40, 80, 80))  # fmt: skip
        self.block3 = nn.Sequential(nn.Conv3d(80, 40, 1), nn.ReLU(), nn.Conv3d(40, 1, 1))

    def forward(self, x):
        x = self.block2(F.max_pool3d(self.block1(F.max_pool3d(self.block0(x), 2)), 2))
        return self.block3(F.interpolate(x, scale_factor=4))


class TutorialUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block0, self.block1, self.block2 = (_tutorial_block(1, 20, 20), _tutorial_block(20, 40, 40),
                                                 _tutorial_block(40, 80, 80))  # fmt: skip
        self.block3, self.block4 = _tutorial_block(120, 80, 40), _tutorial_block(60, 40, 20)
        self.block5 = nn.Sequential(nn.Conv3d(20, 10, 1), nn.ReLU(), nn.Conv3d(10, 1, 1))

    def forward(self, x):
        out0 = self.block0(x)
        out1 = self.block1(F.max_pool3d(out0, 2))
        out2 = self.block2(F.max_pool3d(out1, 2))
        out3 = self.block3(torch.cat([F.interpolate(out2, scale_factor=2), out1], dim=1))
        out4 = self.block4(torch.cat([F.interpolate(out3, scale_factor=2), out0], dim=1))
        return self.block5(out4)


@pytest.mark.parametrize(
    ("name", "reference", "params"), [("fcn", TutorialFCN, 339_303), ("unet", TutorialUNet, 769_023)]
)
def test_tutorial_networks_exact(name, reference, params):
    ours, theirs = build_model(name, in_channels=1, out_channels=1), reference()
    assert _params(ours) == _params(theirs) == params
    # Same tensors in the same order (the tutorial's module order), so the tutorial's weights load 1:1 ...
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert [t.shape for t in ours_state.values()] == [t.shape for t in theirs_state.values()]
    torch.manual_seed(1)
    randomized = {}
    for key, tensor in ours_state.items():  # random weights and statistics (variances positive)
        low = 0.5 if key.endswith("running_var") else -0.5
        randomized[key] = torch.empty_like(tensor).uniform_(low, low + 1) if tensor.is_floating_point() else tensor
    ours.load_state_dict(randomized)
    theirs.load_state_dict(dict(zip(theirs_state, ours.state_dict().values(), strict=True)))
    # ... and compute the same function, in training (batch statistics) and eval (running statistics) mode.
    x = torch.randn(2, 1, 8, 12, 16)
    for train in (True, False):
        ours.train(train), theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "member"), [("fcn", "fcn_w20_d2"), ("unet", "unet_w20_d2")])
def test_tutorial_nets_are_w20_d2_family_members(name, member):
    a, b = build_model(name, in_channels=1, out_channels=1), build_model(member, in_channels=1, out_channels=1)
    assert type(a) is type(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    assert model_info(name).divisor == model_info(member).divisor == 4


def _conv_flops(c_in: int, c_out: int, voxels: int, kernel: int = 3) -> int:
    return 2 * c_in * c_out * kernel**3 * voxels


def test_fcn_flops_analytic():
    n = 16 * 16 * 16  # voxels at full resolution; /8 per pooling
    forward = (
        _conv_flops(1, 20, n) + _conv_flops(20, 20, n)
        + _conv_flops(20, 40, n // 8) + _conv_flops(40, 40, n // 8)
        + _conv_flops(40, 80, n // 64) + _conv_flops(80, 80, n // 64)
        + _conv_flops(80, 40, n, 1) + _conv_flops(40, 1, n, 1)
    )  # fmt: skip
    model = build_model("fcn", in_channels=1, out_channels=1)
    assert count_flops(model, (1, 1, 16, 16, 16), train_step=False) == forward
    # Backward of every convolution costs two forwards (input and weight gradients): every conv input
    # depends on a learnable batch-norm or conv, so all input gradients are needed.
    assert count_flops(model, (1, 1, 16, 16, 16), train_step=True) == 3 * forward
    info = model_info("fcn")
    assert info.mflop_per_voxel_forward == pytest.approx(forward / n / 1e6)
    assert info.mflop_per_voxel_train == pytest.approx(3 * forward / n / 1e6)


def test_unet_flops_analytic():
    n = 8 * 16 * 24
    forward = (
        _conv_flops(1, 20, n) + _conv_flops(20, 20, n)
        + _conv_flops(20, 40, n // 8) + _conv_flops(40, 40, n // 8)
        + _conv_flops(40, 80, n // 64) + _conv_flops(80, 80, n // 64)
        + _conv_flops(120, 80, n // 8) + _conv_flops(80, 40, n // 8)
        + _conv_flops(60, 40, n) + _conv_flops(40, 20, n)
        + _conv_flops(20, 10, n, 1) + _conv_flops(10, 1, n, 1)
    )  # fmt: skip
    model = build_model("unet", in_channels=1, out_channels=1)
    assert count_flops(model, (1, 1, 8, 16, 24), train_step=False) == forward
    assert count_flops(model, (1, 1, 8, 16, 24), train_step=True) == 3 * forward
    assert model_info("unet").mflop_per_voxel_forward == pytest.approx(forward / n / 1e6)


def test_count_flops_restores_mode_and_gradients():
    model = build_model("fcn_w4_d2", in_channels=1, out_channels=1).eval()
    count_flops(model, (1, 1, 8, 8, 8), train_step=True)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family", ["fcn", "unet"])
@pytest.mark.parametrize("depth", [1, 3])
def test_family_width_and_depth(family, depth):
    model = build_model(f"{family}_w4_d{depth}", in_channels=1, out_channels=2)
    widths = [4 * 2**level for level in range(depth + 1)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3)]
    # Encoder convs double the channels per level; a U-Net's decoder mirrors them back down.
    assert [c.out_channels for c in convs[: 2 * (depth + 1) : 2]] == widths
    if family == "unet":
        assert convs[-1].out_channels == 4
    assert model(torch.randn(1, 1, *[2**depth * k for k in (1, 2, 3)])).shape[1] == 2
    # Padding to the divisor is the caller's job: other sizes fail or come back with the wrong size.
    x = torch.randn(2, 1, 2**depth + 1, 2**depth, 2**depth)
    try:
        assert model(x).shape[2:] != x.shape[2:]
    except RuntimeError:
        assert family == "unet"  # the skip concatenation refuses mismatched sizes


@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_norm_and_upsample_options(name):
    base = build_model(name, in_channels=1, out_channels=1)
    instance = build_model(name, in_channels=1, out_channels=1, norm="instance")
    assert _params(instance) == _params(base)
    assert any(isinstance(m, nn.InstanceNorm3d) for m in instance.modules())
    assert not any(isinstance(m, nn.BatchNorm3d) for m in instance.modules())
    trilinear = build_model(name, in_channels=1, out_channels=1, upsample="trilinear")
    assert _params(trilinear) == _params(base)
    transposed = build_model(name, in_channels=1, out_channels=1, upsample="transposed")
    # Learned upsampling: ConvTranspose3d(C, C, f, stride f) per step, C·C·f³ + C parameters.
    steps = [(80, 4)] if name == "fcn" else [(80, 2), (40, 2)]
    assert _params(transposed) - _params(base) == sum(c * c * f**3 + c for c, f in steps)
    x = torch.randn(1, 1, 8, 12, 4)
    for model in (instance, trilinear, transposed):
        assert model(x).shape == (1, 1, 8, 12, 4)
    with pytest.raises(ModelError, match="upsample='cubic'"):
        build_model(name, in_channels=1, out_channels=1, upsample="cubic")
    with pytest.raises(ModelError, match="norm='group'"):
        build_model(name, in_channels=1, out_channels=1, norm="group")


def test_trilinear_differs_from_nearest():
    torch.manual_seed(0)
    nearest = build_model("fcn_w4_d1", in_channels=1, out_channels=1).eval()
    trilinear = build_model("fcn_w4_d1", in_channels=1, out_channels=1, upsample="trilinear").eval()
    trilinear.load_state_dict(nearest.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    assert not torch.allclose(nearest(x), trilinear(x))
