"""One (model, fold, repeat) job: train on the fold's training cases, predict its validation cases, score them.

:func:`run_job` is the single function every executor runs (in-process, one process per GPU, or a Slurm job through
submitit). It reads everything it needs from the run directory (``manifest.json``, ``splits.json``) and the
preprocessing cache, writes only inside its own job folder, and writes ``result.json`` last. It never raises for a
failing model: the outcome becomes a status (``done``, ``failed``, ``diverged``, ``oom``, ``killed``, ``timeout``)
with a one-sentence reason, so one bad job never stops the others.

This module orchestrates; the pieces live elsewhere: the training loop and its AMP scaler in :mod:`segbench.training`,
the loop's callbacks in :mod:`segbench.callbacks`, checkpoint payloads in :mod:`segbench.checkpoints`, result and
learning-curve files in :mod:`segbench.results`, their names in :mod:`segbench.rundir`.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import logging
import os
import socket
import time
import traceback
import zlib
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segbench import precision as numerics
from segbench import results, rundir, stop
from segbench.atomic import atomic_write_text
from segbench.callbacks import (
    CaseProgress,
    Checkpointer,
    CurveLogger,
    Deadline,
    JobTimeout,
    PeakRss,
    ProgressBar,
    StopAtBoundary,
)
from segbench.case_predictions import PredictionLedger, weights_digest
from segbench.checkpoints import load_latest_checkpoint, restore, save_checkpoint, snapshot
from segbench.config import RunConfig, TrainConfig, config_from_dict
from segbench.data.dataset import DatasetSpec, load_dataset
from segbench.data.nifti import read_label, write_nifti
from segbench.data.preprocess import (
    PreparedCase,
    PreprocessConfig,
    labels_in_source_geometry,
    load_prepared,
    prepare_dataset,
    scores_in_source_geometry,
)
from segbench.data.sampling import PatchDataset, make_loader, resolve_num_workers
from segbench.errors import ConfigError
from segbench.inference import sliding_window_predict
from segbench.job_scope import job_scope, tf32_flags
from segbench.locking import RunLock
from segbench.memory import training_step_memory
from segbench.metrics import compute_case_metrics
from segbench.paths import preprocessed_cache
from segbench.plans.network import NetworkPlan, read_network_plan
from segbench.precision import resolve_memory_format, resolve_precision
from segbench.probabilities import class_probabilities, write_probabilities
from segbench.profiling import cuda_peak_mb, reset_cuda_peak
from segbench.progress import JOB_SUMMARY, job_line, line_interval
from segbench.progress import log as progress_log
from segbench.recipes.catalog import epochs, model_train_config
from segbench.registry import ModelInfo, build_model, has_deep_supervision, model_info, network_plan_scope
from segbench.splits import load_splits
from segbench.stop import KILLED_REASON, STOP_REQUESTED
from segbench.training import LoopState, TrainingDiverged, make_optimizer, train

log = logging.getLogger(__name__)

__all__ = ["JobSpec", "JobTimeout", "job_seed", "out_channels_for", "run_job", "training_batches"]


@dataclass(frozen=True)
class JobSpec:
    """What an executor needs to run one job (picklable: plain values only)."""

    run_dir: str
    model: str
    fold: int
    repeat: int = 0  # 0-based repeat (training seed) of the (model, fold)
    repeats: int = 1  # the run's repeat count R (decides the job folder layout, see segbench.rundir)
    device: str = "cpu"  # resolved device ("cpu", "cuda", "cuda:0")
    cache_dir: str | None = None  # preprocessing cache folder; None = the default (segbench.paths)
    progress: bool = False  # show iteration / case progress bars
    # Modules a job process imports before it runs (they register plugin models / metrics in that process).
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobContext:
    """What one job reads before it trains: its spec, the run's config, its fold's split and the dataset."""

    spec: JobSpec
    config: RunConfig
    split: dict[str, list[str]]  # {"train": [case ids], "val": [case ids]}
    dataset: DatasetSpec
    deadline: Deadline

    @property
    def folder(self) -> Path:
        return rundir.job_dir(self.spec.run_dir, self.spec)

    @property
    def device(self) -> torch.device:
        return torch.device(self.spec.device)

    @property
    def foreground(self) -> tuple[int, ...]:
        return tuple(self.dataset.foreground_labels)

    @property
    def in_channels(self) -> int:
        return len(self.dataset.channels)

    @property
    def out_channels(self) -> int:
        return out_channels_for(self.foreground, loss=self.config.train.loss)

    @property
    def deep_supervision(self) -> bool:
        """This job's model trains with deep supervision: the recipe asks for it and the model has such outputs."""
        return self.config.train.deep_supervision and has_deep_supervision(self.spec.model)

    @property
    def seed(self) -> int:
        return job_seed(self.config.seed, self.spec.fold, self.spec.repeat)


def job_seed(seed: int, fold: int, repeat: int = 0) -> int:
    """Seed of every job of one (fold, repeat): initial weights and the patch/augmentation stream.

    Common random numbers: the model name is deliberately not an input, so within one (fold, repeat) every model
    sees exactly the same training patches, foreground choices and augmentations, and its weights are drawn from the
    same generator state. Two names of one network therefore train identically, and a difference between two
    architectures is not confounded with a different data stream. Stable across processes and Python versions
    (unlike ``hash``).
    """
    return zlib.crc32(f"{seed}/fold{fold}/repeat{repeat}".encode()) & 0x7FFFFFFF


def out_channels_for(foreground_labels: tuple[int, ...], *, loss: str = "auto") -> int:
    """One logit channel for a single foreground label (sigmoid), else background + one per label (softmax); nnU-Net's
    loss (``loss="nnunet"``) always takes background + one per label, as nnU-Net does."""
    if len(foreground_labels) == 1 and loss != "nnunet":
        return 1
    return len(foreground_labels) + 1


def network_plan_of_run(config: RunConfig, run_dir: str | Path) -> NetworkPlan | None:
    """The :class:`~segbench.plans.network.NetworkPlan` plan-built models of this run are built from: the run's copy
    of its plans file (or the file itself before the copy exists) at the run's patch; ``None`` without ``--plans``.

    An unreadable plan gives ``None`` here: the run's plan check (:func:`segbench.runner.run_comparison`) names the
    problem, and a plan-built model without a plan is refused in one sentence.
    """
    if not config.plans:
        return None
    copy = rundir.plans_path(run_dir)
    source = copy if copy.is_file() else Path(config.plans)
    try:
        return read_network_plan(source, config.configuration).with_patch(tuple(config.train.patch_size))
    except ConfigError:
        return None


def run_job(spec: JobSpec) -> results.JobResult:
    """Run one job to completion and write its ``result.json``; returns what was written.

    Resumes from the job's latest checkpoint when one exists. Exceptions inside training or inference become
    statuses; only a failure to write ``result.json`` itself propagates (after a last attempt to record ``failed``).
    """
    folder = rundir.job_dir(spec.run_dir, spec)
    folder.mkdir(parents=True, exist_ok=True)
    # One writer per job folder, even across executors and a resubmitting driver: a second process refuses here.
    with (
        RunLock(folder, name=rundir.JOB_LOCK_FILE, what=f"job {rundir.job_label(spec)} (pid/host)"),
        job_scope(spec.device),  # cuda:N current (pin-memory thread, context), IEEE fp32: restored after the job
    ):
        return _run_locked(spec, folder)


def _run_locked(spec: JobSpec, folder: Path) -> results.JobResult:
    started = time.perf_counter()
    # Markers of an earlier attempt must not outlive this one (a crash now would otherwise leave a stale status).
    for name in rundir.ATTEMPT_MARKERS:
        if (folder / name).exists():
            os.replace(folder / name, rundir.previous_path(folder / name))
    device = torch.device(spec.device)
    if device.type == "cuda":
        # Blocks cached by an earlier job in this process (e.g. one that ran out of memory) would inflate this
        # job's reserved-memory peak.
        gc.collect()
        torch.cuda.empty_cache()
    record: dict[str, Any] = {"host": socket.gethostname()}
    metrics: list[dict[str, Any]] = []
    status, reason = "done", ""
    peak_rss = PeakRss()  # from the job's start: in a job process of its own, the whole job's process tree
    try:
        metrics = _train_and_evaluate(spec, record, started, peak_rss)
    except TrainingDiverged as exc:
        status, reason = "diverged", f"training diverged: {exc}; the last good checkpoint is kept"
        if record.get("precision") in ("bf16", "fp16"):  # tell reduced-precision numerics from the recipe
            reason += f"; it trained in {record['precision']}: `--precision fp32` (or a lower --lr) tells which"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        status, reason = "oom", _out_of_memory(exc, device, record)
    except JobTimeout as exc:
        status, reason = "timeout", str(exc)
    except KeyboardInterrupt:
        _write_result(spec, "killed", KILLED_REASON, record, metrics)
        raise
    except Exception as exc:  # a raising model or any bug must not take the other jobs down
        if STOP_REQUESTED.is_set():
            _write_result(spec, "killed", KILLED_REASON, record, metrics)
            raise KeyboardInterrupt from exc
        status, reason = "failed", f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        atomic_write_text(rundir.error_path(spec.run_dir, spec), traceback.format_exc())
    finally:
        peak_rss.stop()
        record["peak_rss_mb"] = peak_rss.peak_mb
    if status == "done":
        record.pop("phase", None)  # only meaningful for a job that stopped somewhere
    record["job_seconds"] = round(time.perf_counter() - started, 3)
    written = _write_result(spec, status, reason, record, metrics)
    progress_log.info(job_line(rundir.job_label(spec), status, reason, record, metrics), extra={JOB_SUMMARY: True})
    return written


def _out_of_memory(exc: BaseException, device: torch.device, record: dict[str, Any]) -> str:
    """The ``oom`` reason (phase, batch, patch, and on CUDA the peaks in MiB); records the CUDA peaks in ``record``
    (as the prediction's when prediction ran out, else as the training's)."""
    allocated, reserved = cuda_peak_mb(device)
    prefix = "predict" if record.get("phase") == "prediction" else "peak"
    record.update({f"{prefix}_gpu_mem_allocated_mb": allocated, f"{prefix}_gpu_mem_reserved_mb": reserved})
    memory = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "host"
    peaks = "" if allocated is None else f" (peak allocated {allocated:.0f} MiB, reserved {reserved:.0f} MiB)"
    return (
        f"out of {memory} memory during {record.get('phase', 'setup')} at batch size {record.get('batch_size')} "
        f"and patch {record.get('patch_size')}{peaks}"
    )


def _write_result(spec: JobSpec, status: str, reason: str, record: dict, metrics: list) -> results.JobResult:
    result = results.JobResult.for_job(spec, status, reason, record, metrics)
    try:
        results.write_job_result(spec.run_dir, result)
    except OSError as exc:
        # Disk full or similar: never report success. Try to leave a small "failed" marker, then propagate.
        message = f"could not write {rundir.RESULT_FILE}: {exc}"
        failed = results.JobResult.for_job(spec, "failed", message, {}, [])
        try:
            results.write_job_result(spec.run_dir, failed)
        except OSError:
            pass
        raise
    return result


def _load_context(spec: JobSpec, started: float) -> JobContext:
    manifest = results.load_manifest(spec.run_dir)
    config = config_from_dict(manifest["config"])
    # This model's optimiser override (--optimizer-for), if any: a deviation the manifest and the report list.
    config = dataclasses.replace(config, train=model_train_config(config.train, spec.model))
    return JobContext(
        spec=spec,
        config=config,
        split=load_splits(rundir.splits_path(spec.run_dir))[spec.fold],
        dataset=load_dataset(manifest["dataset"]["path"]),
        deadline=Deadline(config.job_timeout_s, started=started),
    )


def _train_and_evaluate(spec: JobSpec, record: dict[str, Any], started: float, peak_rss: PeakRss) -> list[dict]:
    """Train, predict and score one job; fills ``record`` (the jobs.csv row) and returns the metrics.csv rows."""
    # Plugin models / metrics register on import: needed in job processes, a no-op where already imported (in-process);
    # inside the job so that a module that fails to import becomes this job's `failed` status.
    for module in spec.imports:
        importlib.import_module(module)
    ctx = _load_context(spec, started)
    with network_plan_scope(network_plan_of_run(ctx.config, spec.run_dir)):  # plan-built models: the run's plan
        return _train_and_score(ctx, record, peak_rss)


def _train_and_score(ctx: JobContext, record: dict[str, Any], peak_rss: PeakRss) -> list[dict]:
    spec = ctx.spec
    info = model_info(spec.model, in_channels=ctx.in_channels, out_channels=ctx.out_channels)
    record.update(_setup_figures(ctx, info))
    record["phase"] = "memory measurement"
    record.update(_tensor_memory(ctx))
    del record["phase"]  # setup again until training starts
    torch.manual_seed(ctx.seed)  # right before building: initial weights depend only on (seed, fold, repeat)
    model = build_model(spec.model, in_channels=ctx.in_channels, out_channels=ctx.out_channels,
                        deep_supervision=ctx.deep_supervision).to(ctx.device)  # fmt: skip
    record["deep_supervision"] = ctx.deep_supervision
    optimizer = make_optimizer(model, ctx.config.train)
    prepared = _prepare_cases(ctx)
    state, curve, throughput = _train(ctx, LoopState(model=model, optimizer=optimizer), prepared, record, peak_rss)
    record.update(_training_figures(state, curve, throughput, info))

    record["phase"] = "prediction"
    reset_cuda_peak(ctx.device)  # the prediction's peak is its own column: the training's is recorded already
    rows, seconds, kept = _evaluate(ctx, model, prepared, resolved=(state.precision, state.memory_format))
    allocated, reserved = cuda_peak_mb(ctx.device)
    record.update(
        predictions_kept=kept,  # cases an interrupted attempt had predicted with these weights
        predict_gpu_mem_allocated_mb=allocated,
        predict_gpu_mem_reserved_mb=reserved,
        num_val_cases=len(ctx.split["val"]),
        inference_seconds_per_case=round(float(np.mean(seconds)), 3) if seconds else None,
    )
    return rows


def step_numerics(train_cfg: TrainConfig, device: torch.device) -> tuple[str, str]:
    """(precision, memory format) a training step of this config runs with on ``device``, resolved.

    Configs with ``precision`` / ``memory_format`` fields are resolved by :mod:`segbench.precision`; older ones
    (``amp`` / ``channels_last``, honoured on CUDA only) map to fp16 autocast and channels-last-3d on CUDA.
    """
    precision = getattr(train_cfg, "precision", None)
    if precision is None:
        cuda = device.type == "cuda"
        legacy_precision = "fp16" if cuda and getattr(train_cfg, "amp", False) else "fp32"
        legacy_format = "channels_last" if cuda and getattr(train_cfg, "channels_last", False) else "contiguous"
        return legacy_precision, legacy_format
    memory_format = getattr(train_cfg, "memory_format", "auto")
    return resolve_precision(precision, device), resolve_memory_format(memory_format, device)


def _tensor_memory(ctx: JobContext) -> dict[str, float]:
    """The ``tensor_*_mb`` columns: exact live-tensor memory of one training step of this job's model.

    Measured on the job's device, at the run's patch, batch, precision and memory format, on a separate copy of
    the model before training starts (the global RNG is untouched). Out-of-memory propagates (the job could not
    train either); any other failure of the tracker is logged and leaves the columns empty.
    """
    train_cfg = ctx.config.train
    precision, memory_format = step_numerics(train_cfg, ctx.device)
    try:
        memory = training_step_memory(
            ctx.spec.model,
            in_channels=ctx.in_channels,
            out_channels=ctx.out_channels,
            patch_size=tuple(train_cfg.patch_size),
            batch_size=train_cfg.batch_size,
            precision=precision,
            memory_format=memory_format,
            optimizer=train_cfg.optimizer,
            device=ctx.device,
        )
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a broken model fails visibly in training; the figure is optional
        log.warning("%s fold %d: could not measure tensor memory (%s: %s)", ctx.spec.model, ctx.spec.fold,
                    type(exc).__name__, exc)  # fmt: skip
        return {}
    finally:
        if ctx.device.type == "cuda":  # the measurement's cached blocks must not count as the training's
            gc.collect()
            torch.cuda.empty_cache()
    return memory.as_row()


def _setup_figures(ctx: JobContext, info: ModelInfo) -> dict[str, Any]:
    """The jobs.csv fields known before training: the model's costs, device and recipe."""
    train_cfg = ctx.config.train
    figures: dict[str, Any] = {
        "family": info.family,
        "params": info.params,
        "mflop_per_voxel_forward": round(info.mflop_per_voxel_forward, 6),
        "mflop_per_voxel_train": round(info.mflop_per_voxel_train, 6),
        "device": str(ctx.device),
        "recipe": ctx.config.recipe,
        "epochs": epochs(train_cfg),
        "optimizer": train_cfg.optimizer,
        "lr": train_cfg.lr,
        "batch_size": train_cfg.batch_size,
        "patch_size": "x".join(str(s) for s in train_cfg.patch_size),
    }
    if ctx.device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(ctx.device)
    # Resolved where the job runs (a Slurm node may differ from the login node); train() resolves the same way.
    figures["hardware"] = numerics.hardware_name(ctx.device)
    figures["precision"] = numerics.resolve_precision(train_cfg.precision, ctx.device)
    figures["memory_format"] = numerics.resolve_memory_format(train_cfg.memory_format, ctx.device)
    figures.update(tf32_flags())  # as job_scope set them: False, so fp32 is IEEE fp32 on CUDA too
    return figures


def _training_figures(state: LoopState, curve: list[dict], throughput: dict[str, float], info: ModelInfo) -> dict:
    """The jobs.csv fields of the training phase: iterations, time, throughput, achieved FLOP/s, final loss."""
    train_flops = info.mflop_per_voxel_train * 1e6 * throughput["voxels_per_s"]
    return {
        "iterations": state.iteration,
        "train_seconds": round(state.elapsed_s, 3),
        "train_iters_per_s": round(throughput["iters_per_s"], 4),
        "train_voxels_per_s": round(throughput["voxels_per_s"], 1),
        "data_wait_share": round(throughput["data_wait_share"], 4),
        "achieved_gflop_per_s": round(train_flops / 1e9, 3),
        "final_loss": curve[-1]["loss"] if curve else state.loss,
    }


def _prepare_cases(ctx: JobContext) -> dict[str, PreparedCase]:
    """The fold's cases from the preprocessing cache (prepared now if missing), by case id."""
    cache_dir = Path(ctx.spec.cache_dir) if ctx.spec.cache_dir else preprocessed_cache()
    wanted = set(ctx.split["train"]) | set(ctx.split["val"])
    return prepare_dataset(
        ctx.dataset,
        config=PreprocessConfig(target_spacing=ctx.config.target_spacing, plan=_run_plan(ctx)),
        cache_dir=cache_dir,
        cases=[c for c in ctx.dataset.training if c.case_id in wanted],
    )


def _run_plan(ctx: JobContext) -> Any:
    """The run's plan, read from its copy in the run directory (``None`` for a run without ``--plans``)."""
    if not getattr(ctx.config, "plans", None):
        return None
    from segbench.plans.reader import read_plan

    return read_plan(rundir.plans_path(ctx.spec.run_dir), ctx.config.configuration)


def _resume(ctx: JobContext, state: LoopState, record: dict[str, Any]) -> tuple[list[dict], dict[str, Any]]:
    """Restore ``state`` from the job's latest checkpoint, if any: (learning curve so far, the checkpoint's extras).

    The extras are the saved throughput figures, the learning-curve window (losses since the last curve row) and
    the CUDA training peak so far (:func:`_training_peak`).
    """
    checkpoint = load_latest_checkpoint(ctx.folder, map_location="cpu")  # load_state_dict moves to the device
    if checkpoint is None:
        return [], {}
    restore(checkpoint, state)
    record["resumed_at_iteration"] = state.iteration
    log.info("%s: resuming at iteration %d", rundir.job_label(ctx.spec), state.iteration)
    curve = [
        row for row in results.read_learning_curve(ctx.spec.run_dir, ctx.spec) if row["iteration"] <= state.iteration
    ]
    extras = {
        "throughput": dict(checkpoint.get("throughput") or {}),
        "window": list(checkpoint.get("curve_window", [])),
        "gpu_peak_mb": checkpoint.get("training_gpu_peak_mb"),
    }
    return curve, extras


def _batches(
    ctx: JobContext, prepared: dict[str, PreparedCase], model: torch.nn.Module, *, start: int
) -> Generator[dict, None, None]:
    """Training batches from ``start`` on: patches of the fold's training cases, labels as class indices; with the
    nnunet recipe, nnU-Net's sampling and augmentation, and deep-supervision targets where the model trains with them.
    """
    cases = [prepared[case_id] for case_id in ctx.split["train"]]
    train_cfg = ctx.config.train
    if train_cfg.pipeline != "nnunet":
        return training_batches(cases, train_cfg, seed=ctx.seed, foreground=ctx.foreground, start=start,
                                device=ctx.device)  # fmt: skip
    from segbench.recipes.nnunet_augment import deep_supervision_scales
    from segbench.recipes.nnunet_sampling import nnunet_batches

    strides = getattr(model, "segbench_strides", None) if ctx.deep_supervision else None
    plan = _run_plan(ctx)
    return nnunet_batches(
        cases, patch_size=tuple(train_cfg.patch_size), batch_size=train_cfg.batch_size, seed=ctx.seed,
        iterations=_iteration_count(train_cfg), start_iteration=start,
        foreground_labels=ctx.foreground, oversample=train_cfg.fg_fraction,
        deep_supervision_scales=deep_supervision_scales(strides) if strides else None,
        use_mask_for_norm=plan.use_mask_for_norm if plan is not None else None, augment=train_cfg.augment,
        num_workers=resolve_num_workers(train_cfg.num_workers, ctx.device, pipeline="nnunet"), device=ctx.device,
    )  # fmt: skip


def training_batches(
    cases: Sequence[PreparedCase],
    train_cfg: TrainConfig,
    *,
    seed: int,
    foreground: tuple[int, ...],
    start: int = 0,
    device: torch.device,
) -> Generator[dict, None, None]:
    """The batches a job trains on, from iteration ``start``: what ``benchmarks/`` measures a job's loop with.

    Patches of ``cases`` (:class:`PatchDataset`, seeded by ``seed``) through the job's loader (``train_cfg.num_workers``
    workers, pinned memory on CUDA); ``image`` ``(B, C, *patch)`` float32, ``label`` ``(B, *patch)`` uint8 class indices
    (mapped in the workers).
    Close the generator to shut the loader's workers down.
    """
    patch_dataset = PatchDataset(
        cases,
        patch_size=tuple(train_cfg.patch_size),
        length=_iteration_count(train_cfg) * train_cfg.batch_size,
        seed=seed,
        foreground_labels=foreground,
        fg_fraction=train_cfg.fg_fraction,
        augment=train_cfg.augment,
    )
    loader = make_loader(
        patch_dataset,
        batch_size=train_cfg.batch_size,
        start_iteration=start,
        num_workers=resolve_num_workers(train_cfg.num_workers, device),
        pin_memory=device.type == "cuda",
    )
    return (batch for batch in loader)


def _train(
    ctx: JobContext, state: LoopState, prepared: dict[str, PreparedCase], record: dict[str, Any], peak_rss: PeakRss
) -> tuple[LoopState, list[dict], dict[str, float]]:
    """Train from scratch or from the latest checkpoint: (final state, learning curve, throughput figures)."""
    train_cfg, spec = ctx.config.train, ctx.spec
    curve, extras = _resume(ctx, state, record)
    batches = _batches(ctx, prepared, state.model, start=state.iteration)
    reset_cuda_peak(ctx.device)
    peak_rss.sample()
    total = train_cfg.iterations if train_cfg.time_budget_s is None else None
    bar = ProgressBar(
        enabled=spec.progress, total=total, start=state.iteration, desc=rundir.job_label(spec),
        lines_every=line_interval(total, every=train_cfg.log_every),
    )  # fmt: skip
    logger = CurveLogger(spec.run_dir, spec, every=train_cfg.log_every, curve=curve, window=extras.get("window"))

    def snapshot_with_window(loop: LoopState) -> dict[str, Any]:
        # A stop between two curve rows checkpoints mid-window: keep the window's losses for the resumed attempt.
        peak = _training_peak(ctx.device, extras.get("gpu_peak_mb"))
        return {**snapshot(loop), "curve_window": list(logger.window), "training_gpu_peak_mb": peak}

    checkpointer = Checkpointer(
        ctx.folder, every=train_cfg.checkpoint_every, start=state.iteration, save=save_checkpoint,
        snapshot=snapshot_with_window,
    )  # fmt: skip
    callbacks = [peak_rss, bar, logger, checkpointer, ctx.deadline, StopAtBoundary(checkpointer)]
    record["phase"] = "training"
    try:
        with stop.deferred_stops():
            state = train(
                model=state.model,
                optimizer=state.optimizer,
                batches=batches,
                config=train_cfg,
                device=ctx.device,
                out_channels=ctx.out_channels,
                state=state,
                callbacks=callbacks,
            )
    finally:
        bar.close()
        # Shut the loader's workers down now, even when a stop or an error leaves this frame in a traceback: a
        # worker ignores SIGTERM, so interpreter exit (which terminates and joins children) would wait for it forever.
        batches.close()
    peak = _training_peak(ctx.device, extras.get("gpu_peak_mb"))
    record.update(peak_gpu_mem_allocated_mb=peak[0], peak_gpu_mem_reserved_mb=peak[1])
    throughput = state.meter.summary()
    if throughput.get("steady_iterations", 0) == 0 and extras.get("throughput"):
        # Resumed after training had finished (e.g. killed while predicting): keep the measured figures.
        throughput = extras["throughput"]
    return state, curve, throughput


def _training_peak(device: torch.device, earlier: list | None) -> list[float | None]:
    """CUDA ``[allocated, reserved]`` peak of training so far in MiB: this attempt's since training started, or an
    earlier attempt's (saved in the checkpoint it resumed from) where larger. ``[None, None]`` on CPU."""
    now = cuda_peak_mb(device)
    return [None if a is None else max(a, b or 0.0) for a, b in zip(now, earlier or (None, None), strict=True)]


def _iteration_count(train_cfg) -> int:
    # A time budget has no known length: give the sampler a generous one (samples are generated lazily).
    return train_cfg.iterations if train_cfg.time_budget_s is None else 10_000_000


def _evaluate(
    ctx: JobContext, model: torch.nn.Module, prepared: dict[str, PreparedCase], *, resolved: tuple[str, str]
) -> tuple[list, list, int]:
    """Predict and score the fold's validation cases: (metrics.csv rows, prediction seconds per predicted case, cases
    kept from an interrupted attempt).

    ``resolved`` is the (precision, memory format) training resolved: prediction runs in the same. Each prediction is
    written as soon as it is made; a resumed job keeps those its weights made and predicts only the others
    (:mod:`segbench.case_predictions`). Off a terminal each case gets a plain line with its time.
    """
    keep = ctx.config.inference.save_probabilities
    ledger = PredictionLedger(ctx.spec.run_dir, ctx.spec, weights_digest(model), probabilities=keep)
    labels_by_id = {case.case_id: case for case in ctx.dataset.training}
    rows: list[dict] = []
    seconds: list[float] = []
    cases = ctx.split["val"]
    bar = _case_bar(ctx, len(cases))
    for index, case_id in enumerate(cases, start=1):
        case, tic = prepared[case_id], time.perf_counter()
        kept = ledger.kept(case_id)
        if kept:
            prediction = read_label(ledger.path(case_id)).array
        else:
            image, _ = load_prepared(case, mmap=False)
            probabilities = ledger.probabilities_path(case_id) if keep else None
            prediction = _predict_case(ctx, model, image, case, resolved=resolved, probabilities=probabilities)
            seconds.append(time.perf_counter() - tic)
            affine = np.asarray(case.affine, dtype=float).reshape(4, 4)
            write_nifti(ledger.path(case_id), prediction, affine=affine, spacing=case.original_spacing)
        rows += _score_case(ctx, case_id, prediction, labels_by_id[case_id].label)
        bar.update(case_id, index=index, seconds=time.perf_counter() - tic, kept=kept)
        ctx.deadline.check(f"while predicting {case_id}")
    bar.close()
    return rows, seconds, len(cases) - len(seconds)


def _case_bar(ctx: JobContext, total: int) -> CaseProgress:
    return CaseProgress(enabled=ctx.spec.progress, total=total, desc=rundir.job_label(ctx.spec))


def _predict_case(
    ctx: JobContext,
    model: torch.nn.Module,
    image: np.ndarray,
    case: PreparedCase,
    *,
    resolved: tuple[str, str],
    probabilities: Path | None = None,
) -> np.ndarray:
    """Sliding-window prediction of one prepared case, as label values in the case's original geometry.

    Args:
        image: ``(C, D, H, W)`` float, the prepared (normalised, resampled) image of ``case``.
        resolved: (precision, memory format) of the forward passes.
        probabilities: where to write the case's class probabilities on its original grid
            (:mod:`segbench.probabilities`); ``None``: not kept.

    Returns:
        ``(D, H, W)`` uint8 label values (0 and the dataset's foreground labels) on the original voxel grid.
    """
    config, device = ctx.config, ctx.device
    logits = sliding_window_predict(
        model,
        torch.from_numpy(np.asarray(image)),
        patch_size=tuple(config.train.patch_size),
        overlap=config.inference.overlap,
        batch_size=config.inference.batch_size,
        mirror=config.inference.mirror,
        gaussian=config.inference.gaussian,
        device=device,
        precision=resolved[0],
        memory_format=resolved[1],
    )
    if probabilities is not None:
        write_probabilities(probabilities, scores_in_source_geometry(class_probabilities(logits), case))
    classes = torch.from_numpy(labels_in_source_geometry(logits, case).astype(np.int64))
    values = torch.tensor((0, *ctx.foreground), dtype=torch.uint8)
    return values[classes].numpy()


def _score_case(ctx: JobContext, case_id: str, prediction: np.ndarray, label_path: Path) -> list[dict[str, Any]]:
    """The metrics.csv rows of one predicted case (one per foreground label)."""
    reference = read_label(label_path)
    rows = compute_case_metrics(
        prediction, reference.array, reference.spacing, labels=ctx.foreground, tolerance_mm=ctx.config.tolerance_mm
    )
    names = ctx.dataset.labels
    job = {"model": ctx.spec.model, "fold": ctx.spec.fold, "repeat": ctx.spec.repeat}
    return [{**job, "case_id": case_id, "label_name": names.get(row["label"], ""), **row} for row in rows]
