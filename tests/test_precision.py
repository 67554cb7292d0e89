"""Precision and memory-format resolution: what ``auto`` means on this hardware, and the contexts it yields."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from click.testing import CliRunner

from segbench import precision, results, rundir, training
from segbench.cli import main
from segbench.config import RunConfig, TrainConfig, config_from_dict, config_to_dict
from segbench.errors import ConfigError
from segbench.runner import run_comparison


def test_cpu_auto_follows_native_bf16_instructions():
    expected = "bf16" if precision.cpu_has_native_bf16() else "fp32"
    assert precision.resolve_precision("auto", "cpu") == expected


@pytest.mark.parametrize(("device", "expected"), [("cuda", "bf16"), ("cuda:0", "bf16"), ("cuda:1", "fp16"),
                                                ("cuda:2", "fp16")])  # fmt: skip
def test_cuda_auto_asks_the_jobs_gpu_for_native_bf16(monkeypatch, device, expected):
    # cuda:0 is an A100 (8.0), cuda:1 a V100 (7.0) and cuda:2 a T4 (7.5). torch's is_bf16_supported() answers for the
    # current device and, by default, True where bf16 is only emulated: it must not decide.
    capabilities = {0: (8, 0), 1: (7, 0), 2: (7, 5)}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: capabilities[0 if d is None or d.index is None else d.index])  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert precision.resolve_precision("auto", device) == expected
    assert precision.uses_grad_scaler(precision.resolve_precision("auto", device), device) == (expected == "fp16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_on_this_gpu():
    native = torch.cuda.get_device_capability()[0] >= 8
    assert precision.cuda_has_native_bf16("cuda") == native == torch.cuda.is_bf16_supported(including_emulation=False)
    assert precision.resolve_precision("auto", "cuda") == ("bf16" if native else "fp16")


@pytest.mark.parametrize("choice", ["fp32", "bf16", "fp16"])
def test_explicit_precision_passes_through(choice):
    assert precision.resolve_precision(choice, "cpu") == choice


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        precision.resolve_precision("half", "cpu")


def test_memory_format_auto_is_channels_last_and_unknown_is_refused():
    assert precision.resolve_memory_format("auto", "cpu") == "channels_last"
    assert precision.resolve_memory_format("contiguous", "cpu") == "contiguous"
    with pytest.raises(ValueError, match="--memory-format"):
        precision.resolve_memory_format("nhwc", "cpu")


def test_bf16_autocast_runs_convolutions_in_bf16_and_fp32_is_a_no_op():
    conv = torch.nn.Conv3d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 4, 4, 4)
    with precision.autocast("bf16", "cpu"):
        assert conv(x).dtype == torch.bfloat16
    with precision.autocast("fp32", "cpu"):
        assert conv(x).dtype == torch.float32


def test_grad_scaler_only_for_fp16_on_cuda():
    assert precision.uses_grad_scaler("fp16", "cuda")
    assert not precision.uses_grad_scaler("bf16", "cuda")
    assert not precision.uses_grad_scaler("fp16", "cpu")


def test_channels_last_moves_tensors_and_modules():
    x = precision.to_memory_format(torch.randn(1, 2, 3, 4, 5), "channels_last")
    assert x.is_contiguous(memory_format=torch.channels_last_3d)
    conv = precision.to_memory_format(torch.nn.Conv3d(2, 2, 3), "channels_last")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    y = torch.randn(1, 2, 3, 4, 5)
    assert precision.to_memory_format(y, "contiguous") is y


def test_hardware_name_names_the_cpu_and_its_kernels():
    name = precision.hardware_name("cpu")
    assert precision.cpu_features()["capability"] in name


# --- wiring: config, training loop, run directory ---------------------------------------------------------------


def test_config_validates_precision_and_memory_format():
    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, fp16"):
        RunConfig(train=TrainConfig(precision="half"))
    with pytest.raises(ConfigError, match="--memory-format"):
        RunConfig(train=TrainConfig(memory_format="nhwc"))
    assert RunConfig().train.precision == "auto" and RunConfig().train.memory_format == "auto"


def test_a_config_with_the_old_amp_keys_is_refused_naming_the_new_ones():
    data = config_to_dict(RunConfig())
    del data["train"]["precision"], data["train"]["memory_format"]
    data["train"].update(amp=True, channels_last=True)
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    message = str(info.value)
    assert "train.amp (now train.precision)" in message and "train.channels_last (now train.memory_format)" in message
    assert "start a new run" in message


def _tiny_batches(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield {"image": torch.randn((2, 1, 8, 8, 8), generator=generator),
               "label": (torch.rand((2, 8, 8, 8), generator=generator) > 0.6).long()}  # fmt: skip


@pytest.mark.parametrize(("requested", "fmt"), [("bf16", "channels_last"), ("fp16", "contiguous"), ("fp32", "auto")])
def test_training_loop_runs_the_forward_in_the_precision_and_the_loss_in_fp32(requested, fmt):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d
    model = torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 4, 3, padding=1), conv(4, 1, 1))
    seen: list[torch.dtype] = []
    model[3].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    config = TrainConfig(iterations=2, precision=requested, memory_format=fmt, log_every=1, checkpoint_every=1)
    losses: list[torch.Tensor] = []
    real_loss = training.segmentation_loss

    def spy(logits, target, **kwargs):
        losses.append(real_loss(logits, target, **kwargs))
        return losses[-1]

    training.segmentation_loss, previous = spy, training.segmentation_loss
    try:
        state = training.train(model=model, optimizer=training.make_optimizer(model, config), batches=_tiny_batches(),
                               config=config, device=torch.device("cpu"), out_channels=1)  # fmt: skip
    finally:
        training.segmentation_loss = previous
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]
    assert seen == [expected, expected]
    assert all(loss.dtype == torch.float32 for loss in losses)
    assert state.scaler is None  # a GradScaler only for fp16 on CUDA
    assert state.precision == requested
    assert state.memory_format == ("contiguous" if fmt == "contiguous" else "channels_last")
    weight = model[2].weight  # (4, 4, 3, 3, 3): its two layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last_3d) == (state.memory_format == "channels_last")


def _weight_gradient(conv: torch.nn.Conv3d, image: torch.Tensor, *, bf16: bool) -> tuple[torch.Tensor, torch.dtype]:
    conv.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(image)
    out.float().backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)) * 1e-3)
    return conv.weight.grad.clone(), out.dtype


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_guarded_bf16_convolution_smaller_than_its_kernel_has_the_fp32_weight_gradient(memory_format):
    # torch 2.13's CPU bf16 Conv3d returns weight gradients up to 1e37 for a depth of 2 under a 3³ kernel (a 4-level
    # U-Net's bottleneck on 32³ patches); the guard computes such layers in fp32 and leaves larger inputs in bf16.
    torch.manual_seed(0)
    conv = precision.to_memory_format(torch.nn.Conv3d(32, 32, 3, padding=1), memory_format)
    small = precision.to_memory_format(torch.randn(2, 32, 2, 6, 6), memory_format)
    reference, _ = _weight_gradient(conv, small, bf16=False)
    assert precision.guard_small_convolutions(conv, "bf16", "cpu") == 1
    guarded, dtype = _weight_gradient(conv, small, bf16=True)
    assert dtype == torch.float32
    assert torch.allclose(guarded, reference, rtol=1e-4, atol=1e-9)
    twin = copy.deepcopy(conv)
    assert twin.forward.func is precision._conv_fp32_when_smaller_than_kernel and twin.forward.args == (twin,)
    buffer = io.BytesIO()
    torch.save(conv, buffer)  # a guarded model can still be saved whole
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(_weight_gradient(loaded, small, bf16=True)[0], guarded)
    _, dtype = _weight_gradient(conv, torch.randn(2, 32, 8, 8, 8), bf16=True)
    assert dtype == torch.bfloat16  # large inputs keep the fast path
    assert precision.guard_small_convolutions(conv, "bf16", "cpu") == 1  # idempotent
    for other, device in (("fp32", "cpu"), ("bf16", "meta")):
        assert precision.guard_small_convolutions(torch.nn.Conv3d(2, 2, 3), other, device) == 0


def unet_d4_gradient_ratios(device: str = "cpu", *, repeats: int = 8) -> list[dict[str, float]]:
    """Per repeat, each convolution kernel's weight-gradient norm after one bf16 step of a four-level U-Net over the
    fp32 step's (same weights, same batch, unclipped): ``[{parameter name: ratio}, …]``.

    Patches of 32×16×16 give the bottleneck a depth of 2: smaller than the 3³ kernel, the case of oneDNN's CPU bf16
    weight-gradient defect (values up to 1e37, then NaN). bf16 rounding alone changes a gradient's direction a lot at
    batch 2 through BatchNorm, but not its size: a healthy kernel keeps every ratio within (0.02, 50). Also run on
    CUDA by ``benchmarks/gpu_check.py``: does cuDNN have the same defect?
    """
    from segbench.registry import build_model

    torch.manual_seed(0)
    model = build_model("unet_w8_d4", in_channels=1, out_channels=1).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn((2, 1, 32, 16, 16), generator=generator).to(device),
             "label": (torch.rand((2, 32, 16, 16), generator=generator) > 0.7).long().to(device)}  # fmt: skip

    def kernel_gradient_norms(numerics: str) -> dict[str, float]:
        network = copy.deepcopy(model)
        config = TrainConfig(iterations=1, precision=numerics, memory_format="channels_last", grad_clip=0, log_every=1,
                             checkpoint_every=1)  # fmt: skip
        training.train(model=network, optimizer=training.make_optimizer(network, config), batches=iter([batch]),
                       config=config, device=torch.device(device), out_channels=1)  # fmt: skip
        guarded = [precision._is_guarded(m) for m in network.modules() if isinstance(m, torch.nn.Conv3d)]
        on_cpu = torch.device(device).type == "cpu"
        assert all(guarded) if numerics == "bf16" and on_cpu else not any(guarded)  # train() installs it: bf16, CPU
        return {name: float(p.grad.norm()) for name, p in network.named_parameters() if p.dim() == 5}

    reference = kernel_gradient_norms("fp32")
    # The defect strikes in some processes and not in others: several repeats.
    return [
        {name: norm / reference[name] for name, norm in kernel_gradient_norms("bf16").items()} for _ in range(repeats)
    ]


def _outside_healthy_range(ratios: list[dict[str, float]]) -> dict[str, float]:
    return {k: v for repeat in ratios for k, v in repeat.items() if not 0.02 < v < 50}


@pytest.mark.slow
def test_a_four_level_unet_gets_the_fp32_gradient_when_training_in_bf16_on_cpu():
    # Unguarded, the bottleneck's weight gradient is ~1e37 (clipping then scales the whole gradient to zero, and the
    # loss turns NaN a few steps later): the case that diverged in 12 of 15 jobs of the width/depth study.
    assert not _outside_healthy_range(unet_d4_gradient_ratios("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_four_level_unet_weight_gradients_are_the_size_of_fp32s():
    # No guard on CUDA: this settles whether cuDNN has oneDNN's small-depth bf16 weight-gradient defect.
    if not precision.cuda_has_native_bf16("cuda"):
        pytest.skip("this GPU has no native bf16")
    assert not _outside_healthy_range(unet_d4_gradient_ratios("cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_makes_the_one_grad_scaler():
    model = torch.nn.Conv3d(1, 1, 3, padding=1).cuda()
    config = TrainConfig(iterations=1, precision="fp16", log_every=1, checkpoint_every=1)
    state = training.train(model=model, optimizer=training.make_optimizer(model, config), batches=_tiny_batches(),
                           config=config, device=torch.device("cuda"), out_channels=1)  # fmt: skip
    assert isinstance(state.scaler, torch.amp.GradScaler)


def test_run_help_shows_the_precision_options_with_defaults():
    result = CliRunner().invoke(main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--precision [auto|fp32|bf16|fp16]" in text and "--memory-format [auto|channels_last|contiguous]" in text
    assert text.count("[default: auto]") >= 3  # --precision, --memory-format and --device


def test_jobs_table_and_manifest_record_the_resolved_numerics(tiny_task, tmp_path):
    train = TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0, log_every=1, checkpoint_every=1)
    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2, train=train)
    outcome = run_comparison(config, run_dir=tmp_path / "run", progress=False, report=False)
    assert outcome.all_done
    jobs = results.load_jobs(tmp_path / "run")
    assert set(jobs["precision"]) == {precision.resolve_precision("auto", "cpu")}
    assert set(jobs["memory_format"]) == {"channels_last"}
    assert set(jobs["hardware"]) == {precision.hardware_name("cpu")}
    environment = results.load_manifest(tmp_path / "run")["environment"]
    assert environment["cpu_features"] == precision.cpu_features()
    assert environment["cpu"] == precision.cpu_model()


def test_resuming_a_run_made_before_precision_existed_is_one_clear_sentence(tiny_task, tmp_path):
    run_dir = tmp_path / "old"
    train = TrainConfig(iterations=1, patch_size=(16, 16, 16), num_workers=0, log_every=1, checkpoint_every=1)
    run_comparison(RunConfig(data=str(tiny_task), models=("fcn",), folds=2, train=train), run_dir=run_dir,
                   progress=False, report=False)  # fmt: skip
    manifest = json.loads(rundir.manifest_path(run_dir).read_text())
    del manifest["config"]["train"]["precision"], manifest["config"]["train"]["memory_format"]
    manifest["config"]["train"].update(amp=True, channels_last=True)
    rundir.manifest_path(run_dir).write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["run", "--resume", "--out", str(run_dir), "--quiet"])
    assert result.exit_code != 0
    assert "train.amp (now train.precision)" in result.output and "Traceback" not in result.output
