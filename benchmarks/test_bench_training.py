"""The trainer against a bare PyTorch loop, and the share of training time spent waiting for data.

* ``test_trainer_vs_bare_loop``: the tutorial U-Net, the same patch, batch, loss and optimiser, fed from the same
  preloaded tensors. pytest-benchmark times segbench's :func:`segbench.training.train`; the bare loop (forward, loss,
  backward, step — nothing else) is timed in the ``setup`` hook of every round, so both run back to back under the
  same machine load. ``extra_info["throughput_ratio"]`` = bare time / segbench time (median of per-round ratios);
  it must be at least ``MIN_RATIO`` (segbench's bookkeeping — timing, divergence check, gradient clipping,
  callbacks — may cost at most 5 %).
* ``test_data_wait_share``: the real pipeline (preprocessed cache → PatchDataset → DataLoader worker) feeding the
  same trainer; the share of wall time spent waiting for batches must stay at or below 5 %.

Run::

    pytest benchmarks/test_bench_training.py --benchmark-only --benchmark-autosave
"""

from __future__ import annotations

import itertools
import statistics
import time

import pytest
import torch

from segbench.config import TrainConfig
from segbench.registry import build_model
from segbench.training import make_optimizer, segmentation_loss, train

ROUNDS = 5
MIN_RATIO = 0.95
MAX_DATA_WAIT_SHARE = 0.05


def sizes(smoke: bool) -> tuple[tuple[int, int, int], int, int]:
    """(patch, batch, iterations per round): Task02-like on CUDA, small on CPU, tiny in smoke mode."""
    if smoke:
        return (16, 16, 16), 1, 2
    if torch.cuda.is_available():
        return (128, 128, 64), 2, 20
    return (32, 32, 32), 2, 8


@pytest.fixture(scope="module")
def setting(smoke, device):
    patch, batch, iterations = sizes(smoke)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {"image": torch.randn((batch, 1, *patch), generator=generator),
         "label": (torch.rand((batch, *patch), generator=generator) > 0.7).long()}
        for _ in range(4)
    ]  # fmt: skip
    config = TrainConfig(iterations=iterations, batch_size=batch, patch_size=patch, amp=True, grad_clip=12.0)
    return {"patch": patch, "batch": batch, "iterations": iterations, "batches": batches, "config": config}


def fresh_model(device: torch.device):
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, out_channels=1).to(device)
    return model


def bare_loop(model, optimizer, batches, iterations: int, device: torch.device) -> None:
    """Forward, loss, backward, step: the reference every trainer should match."""
    model.train()
    use_amp = device.type == "cuda"
    for batch in itertools.islice(itertools.cycle(batches), iterations):
        image, label = batch["image"].to(device), batch["label"].to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            logits = model(image)
        loss = segmentation_loss(logits, label, kind="dice_bce")
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_trainer_vs_bare_loop(benchmark, setting, device, smoke):
    config = setting["config"]
    model = fresh_model(device)
    optimizer = make_optimizer(model, config)
    bare_model = fresh_model(device)
    bare_optimizer = make_optimizer(bare_model, config)
    bare_seconds: list[float] = []

    def setup():
        tic = time.perf_counter()
        bare_loop(bare_model, bare_optimizer, setting["batches"], setting["iterations"], device)
        bare_seconds.append(time.perf_counter() - tic)

    segbench_seconds: list[float] = []

    def run_trainer():
        tic = time.perf_counter()
        train(model=model, optimizer=optimizer, batches=itertools.cycle(setting["batches"]), config=config,
              device=device, out_channels=1)  # fmt: skip
        segbench_seconds.append(time.perf_counter() - tic)

    benchmark.pedantic(run_trainer, setup=setup, rounds=1 if smoke else ROUNDS, warmup_rounds=0 if smoke else 1)
    ratios = [bare / ours for bare, ours in zip(bare_seconds[-len(segbench_seconds) :], segbench_seconds, strict=True)]
    ratio = statistics.median(ratios)
    voxels = setting["batch"] * setting["iterations"] * int(torch.tensor(setting["patch"]).prod())
    benchmark.extra_info.update(
        model="unet",
        device=str(device),
        input_shape=[setting["batch"], 1, *setting["patch"]],
        iterations_per_round=setting["iterations"],
        throughput_ratio=round(ratio, 4),
        segbench_voxels_per_s=round(voxels / statistics.median(segbench_seconds), 1),
        bare_voxels_per_s=round(voxels / statistics.median(bare_seconds), 1),
    )
    if not smoke:
        assert ratio >= MIN_RATIO, f"trainer reaches only {ratio:.3f} of the bare loop's throughput"


def test_data_wait_share(benchmark, tmp_path_factory, device, smoke):
    from segbench.data.dataset import load_dataset
    from segbench.data.preprocess import PreprocessConfig, prepare_dataset
    from segbench.data.sampling import PatchDataset, make_loader
    from segbench.data.synth import make_synthetic_task

    patch, batch, iterations = sizes(smoke)
    iterations = 3 if smoke else 30
    root = tmp_path_factory.mktemp("bench-data")
    task = make_synthetic_task(root / "task", cases=4, test_cases=0, seed=0, shape=None if not smoke else (24, 24, 16))
    spec = load_dataset(task)
    prepared = prepare_dataset(spec, config=PreprocessConfig(), cache_dir=root / "cache")
    config = TrainConfig(iterations=iterations, batch_size=batch, patch_size=patch)
    shares: list[float] = []

    def run():
        model = fresh_model(device)
        dataset = PatchDataset(list(prepared.values()), patch_size=patch, length=iterations * batch, seed=0)
        loader = make_loader(dataset, batch_size=batch, num_workers=1)
        state = train(model=model, optimizer=make_optimizer(model, config), batches=iter(loader), config=config,
                      device=device, out_channels=1)  # fmt: skip
        shares.append(state.meter.summary()["data_wait_share"])

    benchmark.pedantic(run, rounds=1 if smoke else 3, warmup_rounds=0)
    share = statistics.median(shares)
    benchmark.extra_info.update(device=str(device), input_shape=[batch, 1, *patch], data_wait_share=round(share, 4))
    if not smoke:
        assert share <= MAX_DATA_WAIT_SHARE, f"training waits for data {share:.1%} of the time"
