"""The trainer on the real data pipeline against a bare step on preloaded tensors, and the data-wait share.

* ``test_trainer_vs_bare_loop[fcn|unet]``: what a user's job runs — the preprocessing cache of a synthetic task →
  the job's own batches (:func:`segbench.job.training_batches`: patch dataset, loader with the default number of
  workers, label mapping) → :func:`segbench.training.train` with the default recipe (precision and memory format
  ``auto``, resolved for the device) and the job's peak-memory sampler (:class:`~segbench.callbacks.PeakRss`, a
  thread, as in every job) — against a bare loop of forward, loss, backward, clipping and Adam step on batches
  preloaded on the device, in the same precision and memory format. Both train the same network with the same patch,
  batch and optimiser, and run
  back to back in every round (the bare loop in pytest-benchmark's ``setup`` hook), so both see the same machine
  load. The loader is made once and read across rounds, like one long job; the warm-up round (worker start-up,
  allocator growth, oneDNN/cuDNN kernel selection) is excluded from both sides. ``extra_info["throughput_ratio"]``
  = bare time / trainer time (median of the per-round ratios) must be at least ``MIN_RATIO``: loading, timing, the
  divergence check, gradient clipping and callbacks may cost at most 10 %.
* ``test_data_wait_share``: the same pipeline; the share of training wall time spent waiting for batches must stay
  at or below 5 %.

Run::

    pytest benchmarks/test_bench_training.py --benchmark-only --benchmark-autosave
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time

import pytest
import torch

from segbench import precision as numerics
from segbench.callbacks import PeakRss
from segbench.config import TrainConfig
from segbench.data.sampling import PatchDataset, make_loader, resolve_num_workers
from segbench.job import training_batches
from segbench.registry import build_model
from segbench.training import make_optimizer, segmentation_loss, train

ROUNDS, WARMUP_ROUNDS = 5, 1
MIN_RATIO = 0.9
MAX_DATA_WAIT_SHARE = 0.05


def sizes(smoke: bool) -> tuple[tuple[int, int, int], int, int]:
    """(patch, batch, iterations per round): Task02-like on CUDA, the default run's on CPU, tiny in smoke mode."""
    if smoke:
        return (16, 16, 16), 1, 2
    if torch.cuda.is_available():
        return (128, 128, 64), 2, 20
    return TrainConfig().patch_size, TrainConfig().batch_size, 10


@pytest.fixture(scope="module")
def prepared_cases(tmp_path_factory, smoke):
    """Preprocessed cases of a synthetic Task02-like task, from segbench's real preprocessing cache."""
    from segbench.data.dataset import load_dataset
    from segbench.data.preprocess import PreprocessConfig, prepare_dataset
    from segbench.data.synth import make_synthetic_task

    root = tmp_path_factory.mktemp("bench-data")
    # CUDA patches are Task02-sized: volumes at least as large, so patches are real crops, not padding.
    shape = (24, 24, 16) if smoke else (160, 160, 80) if torch.cuda.is_available() else None
    task = make_synthetic_task(root / "task", cases=4, test_cases=0, seed=0, shape=shape)
    return list(prepare_dataset(load_dataset(task), config=PreprocessConfig(), cache_dir=root / "cache").values())


def fresh_model(device: torch.device, memory_format: str, precision: str, name: str = "unet"):
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, out_channels=1).to(device)
    # As train() does, so that the bare side runs the layers the trainer runs.
    return numerics.prepare_model(model, precision=precision, memory_format=memory_format, device=device)


def pipeline(cases, config: TrainConfig, *, samples: int, device: torch.device):
    """The job's batch iterator: patch dataset → loader with the configured workers (pinned memory on CUDA)."""
    dataset = PatchDataset(cases, patch_size=config.patch_size, length=samples, seed=0)
    workers = resolve_num_workers(config.num_workers, device)
    loader = make_loader(dataset, batch_size=config.batch_size, num_workers=workers, pin_memory=device.type == "cuda")
    return iter(loader)


def bare_loop(model, optimizer, batches, iterations: int, device: torch.device, precision: str) -> None:
    """Forward, loss, backward, clipping, step on preloaded device tensors: the reference a job's loop should match."""
    model.train()
    for image, label in itertools.islice(itertools.cycle(batches), iterations):
        optimizer.zero_grad(set_to_none=True)
        with numerics.autocast(precision, device):
            logits = model(image)
        loss = segmentation_loss(logits, label, kind="dice_bce")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), TrainConfig().grad_clip)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@pytest.mark.parametrize("name", ["fcn", "unet"])
def test_trainer_vs_bare_loop(benchmark, prepared_cases, device, smoke, name):
    patch, batch, iterations = sizes(smoke)
    if name == "fcn" and not smoke:
        iterations *= 3  # a step a third as long: rounds of comparable length
    rounds, warmup = (1, 0) if smoke else (ROUNDS, WARMUP_ROUNDS)
    base = dataclasses.replace(TrainConfig(), patch_size=patch, batch_size=batch, iterations=iterations)
    precision = numerics.resolve_precision(base.precision, device)
    memory_format = numerics.resolve_memory_format(base.memory_format, device)
    job_config = dataclasses.replace(base, iterations=(rounds + warmup) * iterations)
    batches = training_batches(prepared_cases, job_config, seed=0, foreground=(1,), device=device)
    model = fresh_model(device, memory_format, precision, name)
    optimizer = make_optimizer(model, base)
    peak_rss = PeakRss()  # its sampling thread runs beside every job's training

    preloaded = [(numerics.to_memory_format(b["image"].to(device), memory_format), b["label"].to(device))
                 for b in pipeline(prepared_cases, base, samples=4 * batch, device=device)]  # fmt: skip
    bare_model = fresh_model(device, memory_format, precision, name)
    bare_optimizer = make_optimizer(bare_model, base)
    bare_seconds: list[float] = []
    trainer_seconds: list[float] = []
    done = {"iterations": 0}

    def setup():
        tic = time.perf_counter()
        bare_loop(bare_model, bare_optimizer, preloaded, iterations, device, precision)
        bare_seconds.append(time.perf_counter() - tic)

    def run_trainer():
        # Each round continues the same job: the budget grows by one round, the loader keeps streaming.
        done["iterations"] += iterations
        config = dataclasses.replace(base, iterations=done["iterations"])
        tic = time.perf_counter()
        state = train(model=model, optimizer=optimizer, batches=batches, config=config, device=device,
                      out_channels=1, state=run_trainer.state, callbacks=[peak_rss])  # fmt: skip
        trainer_seconds.append(time.perf_counter() - tic)
        run_trainer.state = state

    run_trainer.state = None
    try:
        benchmark.pedantic(run_trainer, setup=setup, rounds=rounds, warmup_rounds=warmup)
    finally:
        peak_rss.stop()
        batches.close()
    # setup and the timed call both run in warm-up rounds too: drop those from both sides.
    bare, ours = bare_seconds[warmup:], trainer_seconds[warmup:]
    ratio = statistics.median(b / o for b, o in zip(bare, ours, strict=True))
    voxels = batch * iterations * int(torch.tensor(patch).prod())
    benchmark.extra_info.update(
        model=name,
        device=numerics.hardware_name(device),
        num_workers=resolve_num_workers(base.num_workers, device),
        precision=precision,
        memory_format=memory_format,
        threads=torch.get_num_threads(),
        input_shape=[batch, 1, *patch],
        iterations_per_round=iterations,
        timed_rounds=len(ours),
        throughput_ratio=round(ratio, 4),
        trainer_voxels_per_s=round(voxels / statistics.median(ours), 1),
        bare_voxels_per_s=round(voxels / statistics.median(bare), 1),
        data_wait_share=round(run_trainer.state.meter.summary()["data_wait_share"], 4),
    )
    if not smoke:
        assert ratio >= MIN_RATIO, f"the trainer reaches only {ratio:.3f} of the bare loop's throughput"


def test_data_wait_share(benchmark, prepared_cases, device, smoke):
    patch, batch, _ = sizes(smoke)
    iterations = 3 if smoke else 30
    config = dataclasses.replace(TrainConfig(), iterations=iterations, batch_size=batch, patch_size=patch)
    shares: list[float] = []

    def run():
        model = fresh_model(device, numerics.resolve_memory_format(config.memory_format, device),
                            numerics.resolve_precision(config.precision, device))  # fmt: skip
        batches = pipeline(prepared_cases, config, samples=iterations * batch, device=device)
        state = train(model=model, optimizer=make_optimizer(model, config), batches=batches, config=config,
                      device=device, out_channels=1)  # fmt: skip
        shares.append(state.meter.summary()["data_wait_share"])

    benchmark.pedantic(run, rounds=1 if smoke else 3, warmup_rounds=0)
    share = statistics.median(shares)
    benchmark.extra_info.update(device=str(device), input_shape=[batch, 1, *patch], data_wait_share=round(share, 4))
    if not smoke:
        assert share <= MAX_DATA_WAIT_SHARE, f"training waits for data {share:.1%} of the time"
