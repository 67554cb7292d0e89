"""One (model, fold) job: train on the fold's training cases, predict its validation cases, score them.

:func:`run_job` is the single function every executor runs (in-process, one process per GPU, or a Slurm job through
submitit). It reads everything it needs from the run directory (``manifest.json``, ``splits.json``) and the
preprocessing cache, writes only inside its own job folder, and writes ``result.json`` last. It never raises for a
failing model: the outcome becomes a status (``done``, ``failed``, ``diverged``, ``oom``, ``killed``, ``timeout``)
with a one-sentence reason, so one bad job never stops the others.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import threading
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch

from segbench import results
from segbench.atomic import atomic_write_text
from segbench.checkpoints import CheckpointError, load_latest_checkpoint, save_checkpoint
from segbench.config import RunConfig, config_from_dict
from segbench.data.dataset import load_dataset
from segbench.data.nifti import read_label, write_nifti
from segbench.data.preprocess import PreparedCase, PreprocessConfig, load_prepared, prepare_dataset, restore_to_original
from segbench.data.sampling import PatchDataset, make_loader
from segbench.inference import logits_to_labels, sliding_window_predict
from segbench.locking import RunLock
from segbench.metrics import compute_case_metrics
from segbench.paths import preprocessed_cache
from segbench.profiling import cuda_peak_mb, reset_cuda_peak
from segbench.registry import build_model, model_info
from segbench.splits import load_splits
from segbench.training import LoopState, TrainingDiverged, make_optimizer, train

log = logging.getLogger(__name__)


SPLITS_FILE = "splits.json"
JOB_LOCK_FILE = "job.lock"


# Set by the CLI's SIGTERM/SIGINT handler: whatever exception the interruption surfaces as inside a job, the job is
# recorded as killed (not failed) and no further job starts.
STOP_REQUESTED = threading.Event()
KILLED_REASON = "interrupted (SIGINT/SIGTERM); continue with --resume"


class JobTimeout(RuntimeError):
    """The job exceeded ``config.job_timeout_s``."""


@dataclass(frozen=True)
class JobSpec:
    """What an executor needs to run one job (picklable: plain values only)."""

    run_dir: str
    model: str
    fold: int
    device: str = "cpu"  # resolved device ("cpu", "cuda", "cuda:0")
    cache_dir: str | None = None  # preprocessing cache folder; None = the default (segbench.paths)
    progress: bool = False  # show iteration / case progress bars (in-process runs)


def job_seed(seed: int, model: str, fold: int) -> int:
    """Seed of a (model, fold) job: stable across processes and Python versions (unlike ``hash``)."""
    return zlib.crc32(f"{seed}/{model}/{fold}".encode()) & 0x7FFFFFFF


def class_lookup(foreground_labels: tuple[int, ...]) -> torch.Tensor:
    """Map label values to class indices (0 background, 1.. foreground in order); unknown values → background."""
    lut = torch.zeros(max(foreground_labels, default=0) + 1 if foreground_labels else 1, dtype=torch.long)
    for index, value in enumerate(foreground_labels, start=1):
        lut[value] = index
    return lut


def out_channels_for(foreground_labels: tuple[int, ...]) -> int:
    """One logit channel for a single foreground label (sigmoid), else background + one per label (softmax)."""
    return 1 if len(foreground_labels) == 1 else len(foreground_labels) + 1


def run_job(spec: JobSpec) -> results.JobResult:
    """Run one job to completion and write its ``result.json``; returns what was written.

    Resumes from the job's latest checkpoint when one exists. Exceptions inside training or inference become
    statuses; only a failure to write ``result.json`` itself propagates (after a last attempt to record ``failed``).
    """
    folder = results.job_dir(spec.run_dir, spec.model, spec.fold)
    folder.mkdir(parents=True, exist_ok=True)
    # One writer per job folder, even across executors and a resubmitting driver: a second process refuses here.
    with RunLock(folder, name=JOB_LOCK_FILE, what=f"job {spec.model} fold {spec.fold} (pid/host)"):
        return _run_locked(spec, folder)


def _run_locked(spec: JobSpec, folder: Path) -> results.JobResult:
    started = time.perf_counter()
    # Markers of an earlier attempt must not outlive this one (a crash now would otherwise leave a stale status).
    for name in (results.RESULT_FILE, "error.txt"):
        if (folder / name).exists():
            os.replace(folder / name, folder / f"{name}.previous")
    device = torch.device(spec.device)
    if device.type == "cuda":
        # Blocks cached by an earlier job in this process (e.g. one that ran out of memory) would inflate this
        # job's reserved-memory peak.
        gc.collect()
        torch.cuda.empty_cache()
    record: dict[str, Any] = {"host": socket.gethostname()}
    metrics: list[dict[str, Any]] = []
    status, reason = "done", ""
    try:
        metrics = _train_and_evaluate(spec, folder, record, started)
    except TrainingDiverged as exc:
        status, reason = "diverged", f"training diverged: {exc}; the last good checkpoint is kept"
    except (torch.OutOfMemoryError, MemoryError) as exc:
        allocated, reserved = cuda_peak_mb(device)
        status = "oom"
        memory = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "host"
        reason = (
            f"out of {memory} memory during {record.get('phase', 'setup')} at batch size {record.get('batch_size')} "
            f"and patch {record.get('patch_size')} (peak allocated {allocated} MB, reserved {reserved} MB)"
        )
        record.update(peak_gpu_mem_allocated_mb=allocated, peak_gpu_mem_reserved_mb=reserved)
    except JobTimeout as exc:
        status, reason = "timeout", str(exc)
    except KeyboardInterrupt:
        status, reason = "killed", KILLED_REASON
        _write_result(spec, status, reason, record, metrics)
        raise
    except Exception as exc:  # a raising model or any bug must not take the other jobs down
        if STOP_REQUESTED.is_set():
            _write_result(spec, "killed", KILLED_REASON, record, metrics)
            raise KeyboardInterrupt from exc
        status, reason = "failed", f"{exc.__class__.__name__}: {exc}".splitlines()[0][:500]
        atomic_write_text(folder / "error.txt", traceback.format_exc())
    if status == "done":
        record.pop("phase", None)  # only meaningful for a job that stopped somewhere
    record["job_seconds"] = round(time.perf_counter() - started, 3)
    return _write_result(spec, status, reason, record, metrics)


def _write_result(spec: JobSpec, status: str, reason: str, record: dict, metrics: list) -> results.JobResult:
    result = results.JobResult(spec.model, spec.fold, status, reason, record, metrics)
    try:
        results.write_job_result(spec.run_dir, result)
    except OSError as exc:
        # Disk full or similar: never report success. Try to leave a small "failed" marker, then propagate.
        failed = results.JobResult(spec.model, spec.fold, "failed", f"could not write result.json: {exc}", {}, [])
        try:
            results.write_job_result(spec.run_dir, failed)
        except OSError:
            pass
        raise
    return result


def _load_context(spec: JobSpec) -> tuple[RunConfig, dict, dict[str, list[str]]]:
    manifest = results.load_manifest(spec.run_dir)
    config = config_from_dict(manifest["config"])
    split = load_splits(Path(spec.run_dir) / SPLITS_FILE)[spec.fold]
    return config, manifest, split


def _train_and_evaluate(spec: JobSpec, folder: Path, record: dict, started: float) -> list[dict]:
    config, manifest, split = _load_context(spec)
    train_cfg = config.train
    device = torch.device(spec.device)
    dataset = load_dataset(manifest["dataset"]["path"])
    foreground = tuple(dataset.foreground_labels)
    out_channels = out_channels_for(foreground)
    in_channels = len(dataset.channels)
    seed = job_seed(config.seed, spec.model, spec.fold)

    info = model_info(spec.model, in_channels=in_channels, out_channels=out_channels)
    record.update(
        family=info.family,
        params=info.params,
        mflop_per_voxel_forward=round(info.mflop_per_voxel_forward, 6),
        mflop_per_voxel_train=round(info.mflop_per_voxel_train, 6),
        device=str(device),
        batch_size=train_cfg.batch_size,
        patch_size="x".join(str(s) for s in train_cfg.patch_size),
    )
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    torch.manual_seed(seed)  # right before building: initial weights depend only on (seed, model, fold)
    model = build_model(spec.model, in_channels=in_channels, out_channels=out_channels).to(device)
    optimizer = make_optimizer(model, train_cfg)

    cache_dir = Path(spec.cache_dir) if spec.cache_dir else preprocessed_cache()
    prepared = prepare_dataset(
        dataset,
        config=PreprocessConfig(target_spacing=config.target_spacing),
        cache_dir=cache_dir,
        cases=[c for c in dataset.training if c.case_id in set(split["train"]) | set(split["val"])],
    )

    # --- resume -------------------------------------------------------------------------------------------------
    state = LoopState(model=model, optimizer=optimizer, scaler=None, iteration=0, elapsed_s=0.0)
    if device.type == "cuda" and train_cfg.amp:
        state.scaler = torch.amp.GradScaler("cuda")
    curve: list[dict[str, float]] = []
    saved_throughput: dict[str, float] = {}
    checkpoint = load_latest_checkpoint(folder, map_location="cpu")  # load_state_dict moves to the model's device
    if checkpoint is not None:
        _restore(checkpoint, state)
        saved_throughput = dict(checkpoint.get("throughput") or {})
        curve = [row for row in _read_curve(folder) if row["iteration"] <= state.iteration]
        record["resumed_at_iteration"] = state.iteration
        log.info("%s fold %d: resuming at iteration %d", spec.model, spec.fold, state.iteration)

    # --- train --------------------------------------------------------------------------------------------------
    train_cases = [prepared[case_id] for case_id in split["train"]]
    patch_dataset = PatchDataset(
        train_cases,
        patch_size=tuple(train_cfg.patch_size),
        length=_sample_count(train_cfg),
        seed=seed,
        foreground_labels=foreground,
        fg_fraction=train_cfg.fg_fraction,
        augment=train_cfg.augment,
    )
    loader = make_loader(
        patch_dataset,
        batch_size=train_cfg.batch_size,
        start_iteration=state.iteration,
        num_workers=train_cfg.num_workers,
        pin_memory=device.type == "cuda",
    )
    lut = class_lookup(foreground)
    batches = ({**batch, "label": lut[batch["label"].long()]} for batch in loader)
    reset_cuda_peak(device)
    process = psutil.Process()
    peak_rss = [process.memory_info().rss]
    window: list[float] = []
    last_saved = [state.iteration]
    bar = _progress_bar(spec, train_cfg, state.iteration)
    record["phase"] = "training"

    def on_step(loop: LoopState) -> None:
        peak_rss[0] = max(peak_rss[0], process.memory_info().rss)
        if not loop.finished:
            window.append(loop.loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loop.loss:.3f}")
        if window and (loop.iteration % train_cfg.log_every == 0 or loop.finished):
            curve.append(
                {"iteration": loop.iteration, "loss": float(np.mean(window)), "lr": loop.lr, "wall_s": loop.elapsed_s}
            )
            window.clear()
            _write_curve(folder, curve)
        due = loop.iteration % train_cfg.checkpoint_every == 0 or loop.finished
        if due and loop.iteration != last_saved[0]:
            save_checkpoint(folder, _snapshot(loop))
            last_saved[0] = loop.iteration
        if config.job_timeout_s is not None and time.perf_counter() - started > config.job_timeout_s:
            raise JobTimeout(f"job exceeded its time limit of {config.job_timeout_s:g} s at iteration {loop.iteration}")

    try:
        state = train(
            model=model,
            optimizer=optimizer,
            batches=iter(batches),
            config=train_cfg,
            device=device,
            out_channels=out_channels,
            state=state,
            callbacks=[on_step],
        )
    finally:
        if bar is not None:
            bar.close()
    throughput = state.meter.summary()
    if throughput.get("steady_iterations", 0) == 0 and saved_throughput:
        # Resumed after training had finished (e.g. killed while predicting): keep the measured figures.
        throughput = saved_throughput
    train_flops = info.mflop_per_voxel_train * 1e6 * throughput["voxels_per_s"]
    record.update(
        iterations=state.iteration,
        train_seconds=round(state.elapsed_s, 3),
        train_iters_per_s=round(throughput["iters_per_s"], 4),
        train_voxels_per_s=round(throughput["voxels_per_s"], 1),
        data_wait_share=round(throughput["data_wait_share"], 4),
        achieved_gflop_per_s=round(train_flops / 1e9, 3),
        final_loss=curve[-1]["loss"] if curve else state.loss,
    )

    # --- predict and evaluate the fold's validation cases -------------------------------------------------------
    record["phase"] = "prediction"
    rows, seconds = _evaluate(spec, config, folder, model, device, prepared, split["val"], dataset, foreground, started)
    allocated, reserved = cuda_peak_mb(device)
    peak_rss[0] = max(peak_rss[0], process.memory_info().rss)
    record.update(
        peak_gpu_mem_allocated_mb=allocated,
        peak_gpu_mem_reserved_mb=reserved,
        peak_rss_mb=round(peak_rss[0] / 2**20, 1),
        num_val_cases=len(split["val"]),
        inference_seconds_per_case=round(float(np.mean(seconds)), 3) if seconds else None,
    )
    return rows


def _sample_count(train_cfg) -> int:
    # A time budget has no known length: give the sampler a generous one (samples are generated lazily).
    iterations = train_cfg.iterations if train_cfg.time_budget_s is None else 10_000_000
    return iterations * train_cfg.batch_size


def _evaluate(spec, config, folder, model, device, prepared, val_ids, dataset, foreground, started):
    predictions = folder / "predictions"
    predictions.mkdir(exist_ok=True)
    labels_by_id = {case.case_id: case for case in dataset.training}
    values = torch.tensor((0, *foreground), dtype=torch.uint8)
    rows: list[dict] = []
    seconds: list[float] = []
    iterator = val_ids
    if spec.progress:
        from tqdm.auto import tqdm

        iterator = tqdm(val_ids, desc=f"{spec.model} fold {spec.fold} predict", unit="case", leave=False)
    for case_id in iterator:
        case: PreparedCase = prepared[case_id]
        image, _ = load_prepared(case, mmap=False)
        tic = time.perf_counter()
        logits = sliding_window_predict(
            model,
            torch.from_numpy(np.asarray(image)),
            patch_size=tuple(config.train.patch_size),
            overlap=config.inference.overlap,
            batch_size=config.inference.batch_size,
            mirror=config.inference.mirror,
            gaussian=config.inference.gaussian,
            device=device,
            amp=config.train.amp and device.type == "cuda",
        )
        logits = restore_to_original(logits, case)
        classes = torch.from_numpy(logits_to_labels(logits).astype(np.int64))
        prediction = values[classes].numpy()
        seconds.append(time.perf_counter() - tic)
        affine = np.asarray(case.affine, dtype=float).reshape(4, 4)
        write_nifti(predictions / f"{case_id}.nii.gz", prediction, affine=affine, spacing=case.original_spacing)
        reference = read_label(labels_by_id[case_id].label)
        names = dataset.labels
        for row in compute_case_metrics(
            prediction, reference.array, reference.spacing, labels=foreground, tolerance_mm=config.tolerance_mm
        ):
            rows.append(
                {
                    "model": spec.model,
                    "fold": spec.fold,
                    "case_id": case_id,
                    "label_name": names.get(row["label"], ""),
                    **row,
                }  # fmt: skip
            )
        if config.job_timeout_s is not None and time.perf_counter() - started > config.job_timeout_s:
            raise JobTimeout(f"job exceeded its time limit of {config.job_timeout_s:g} s while predicting {case_id}")
    return rows, seconds


def _snapshot(loop: LoopState) -> dict[str, Any]:
    return {
        "format": 1,
        "iteration": loop.iteration,
        "elapsed_s": loop.elapsed_s,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(_device_of(loop.model)) if _device_of(loop.model).type == "cuda" else None,
        "loss": loop.loss,
        "throughput": {key: float(value) for key, value in loop.meter.summary().items()},
    }


def _restore(checkpoint: dict[str, Any], state: LoopState) -> None:
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        if state.scaler is not None and checkpoint.get("scaler"):
            state.scaler.load_state_dict(checkpoint["scaler"])
        torch.set_rng_state(checkpoint["torch_rng"].cpu())
        device = _device_of(state.model)
        if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        state.iteration = int(checkpoint["iteration"])
        state.elapsed_s = float(checkpoint["elapsed_s"])
        state.loss = float(checkpoint.get("loss", math.nan))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint does not match model {type(state.model).__name__}: {exc}") from None


def _device_of(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _write_curve(folder: Path, curve: list[dict[str, float]]) -> None:
    atomic_write_text(folder / results.LEARNING_CURVE_FILE, pd.DataFrame(curve).to_csv(index=False))


def _read_curve(folder: Path) -> list[dict[str, float]]:
    path = folder / results.LEARNING_CURVE_FILE
    if not path.exists():
        return []
    try:
        return pd.read_csv(path).to_dict("records")
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return []


def _progress_bar(spec: JobSpec, train_cfg, start: int):
    if not spec.progress:
        return None
    from tqdm.auto import tqdm

    total = train_cfg.iterations if train_cfg.time_budget_s is None else None
    return tqdm(total=total, initial=start, desc=f"{spec.model} fold {spec.fold} train", unit="it", leave=False)
