"""What a run will cost, stated before its first job: time per job, peak memory, cache size.

The figures come from measurements on this machine, not from tables:

* **training time**: a few real training steps of each model (the one training loop, :func:`segbench.training.train`,
  on random batches of the run's patch, batch size, precision and memory format) give the seconds per step; the budget
  gives the steps (``--iterations``) or the time itself (``--time-budget``).
* **prediction time**: the real sliding-window predictor (:func:`segbench.inference.sliding_window_predict`, the run's
  overlap, mirroring and window batch) timed on a three-window image gives seconds per window; each validation case's
  window count follows from its header shape. Writing and scoring a case is timed once on the largest case.
* **peak memory**: the exact tensor-memory estimator (:func:`segbench.memory.estimate_memory`, FakeTensor: nothing is
  allocated), plus the accumulators sliding-window prediction keeps for the largest case.
* **cache**: the bytes the preprocessing cache will hold for the dataset (float32 images, uint8 labels).

A job also spends time outside its training and prediction loops (the exact memory measurement runs two training
steps, the model's FLOPs are counted, result files are written): :data:`JOB_SETUP_STEPS` steps plus
:data:`JOB_SETUP_S` seconds, fitted to the default run's ``jobs.csv``. Loader stalls are not modelled (the steps are
timed on batches already in memory). The estimate is recorded in ``manifest.json`` and the report compares it with
what the jobs measured.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segbench.config import RunConfig
from segbench.data.cache import format_size as _size
from segbench.geometry import CaseGeometry, padded_shape, window_count

log = logging.getLogger(__name__)

__all__ = [
    "CostEstimate",
    "ModelEstimate",
    "estimate_for_run",
    "estimate_run",
    "measure_step_seconds",
    "measure_window_seconds",
]

#: Extra training-step equivalents a job spends outside its loop (memory measurement: two steps; first steps slow).
JOB_SETUP_STEPS = 4
#: Fixed seconds a job spends outside its loops (FLOP count, loading the fold's cases, writing results).
JOB_SETUP_S = 0.5
#: Timed steps after one untimed warm-up step.
TIMED_STEPS = 3
#: Seconds within which a window timing adds calls (up to five) to take the median of.
WINDOW_TIMING_S = 2.0


@dataclass(frozen=True)
class ModelEstimate:
    """One model's estimated cost per job (seconds, MiB)."""

    model: str
    jobs: int  # jobs of this model still to run
    step_s: float  # one training step, measured
    iterations: int  # per job: the budget, or what a time budget buys at this step time
    train_s: float  # per job
    window_s: float  # one sliding-window window (all its mirrors), measured
    predict_s: float  # per job: every validation case of a fold (mean over folds), writing and scoring included
    job_s: float  # per job: training + prediction + setup
    tensor_peak_mb: float  # one training step, exact estimator (NaN when it could not be estimated)


@dataclass(frozen=True)
class CostEstimate:
    """The whole run's estimate; :meth:`lines` is what ``segbench run`` prints, :meth:`as_dict` what the manifest
    records."""

    models: tuple[ModelEstimate, ...]
    device: str
    precision: str
    memory_format: str
    windows_per_case: float  # mean over the cases that will be predicted
    cases_per_job: float
    case_overhead_s: float  # writing + scoring one case (largest case)
    prediction_buffers_mb: float  # sliding-window accumulators of the largest case
    cache: dict[str, Any]  # path, bytes (this dataset), cached (entries already there), cases
    advice: tuple[str, ...] = ()  # options that reduce prediction time when it dominates

    @property
    def jobs(self) -> int:
        return sum(m.jobs for m in self.models)

    @property
    def total_s(self) -> float:
        return sum(m.job_s * m.jobs for m in self.models)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["total_s"], data["jobs"] = round(self.total_s, 1), self.jobs
        data["models"] = [{k: _rounded(v) for k, v in m.items()} for m in data["models"]]
        return {k: _rounded(v) for k, v in data.items()}

    def lines(self) -> list[str]:
        """Plain lines: one header, one per model, the totals, then advice."""
        out = [
            f"Estimate before the first job ({self.jobs} job(s) on {self.device}, {self.precision}, "
            f'{self.memory_format}; measured here, README "Cost estimate"):'
        ]
        for m in self.models:
            memory = f"{m.tensor_peak_mb:,.0f} MiB" if math.isfinite(m.tensor_peak_mb) else "? MiB"
            out.append(
                f"  {m.model}: {_duration(m.job_s)} per job = training {_duration(m.train_s)} ({m.iterations} it x "
                f"{m.step_s:.3g} s) + prediction {_duration(m.predict_s)} ({self.cases_per_job:.3g} cases x "
                f"{self.windows_per_case:.3g} windows x {m.window_s:.3g} s); peak tensor memory {memory} per step"
            )
        out.append(
            f"  total: {_duration(self.total_s)} for {self.jobs} job(s) one after another; prediction buffers "
            f"{self.prediction_buffers_mb:,.0f} MiB for the largest case"
        )
        cache = self.cache
        out.append(
            f"  cache: {cache['path']} holds {_size(cache['bytes'])} for this dataset ({cache['cached']} of "
            f"{cache['cases']} case(s) already prepared)"
        )
        out += [f"  {line}" for line in self.advice]
        return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _random_batches(shape: tuple[int, ...], classes: int, device: torch.device):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(shape, generator=generator).to(device)
    label = torch.randint(0, classes, (shape[0], *shape[2:]), generator=generator).to(device)
    while True:
        yield {"image": image, "label": label}


def measure_step_seconds(
    model_name: str, *, config: RunConfig, in_channels: int, out_channels: int, device: torch.device | str
) -> float:
    """Median seconds of one training step of ``model_name`` at the run's patch, batch and numerics on ``device``.

    Runs the real loop (:func:`segbench.training.train`) for one warm-up and :data:`TIMED_STEPS` timed steps on a
    fresh model and random batches; the global RNG is forked, so nothing the run does later changes.

    Raises:
        torch.OutOfMemoryError, and whatever the model raises (the caller reports it).
    """
    from segbench.registry import build_model
    from segbench.training import LoopState, make_optimizer, train

    device = torch.device(device)
    train_cfg = dataclasses.replace(config.train, iterations=1 + TIMED_STEPS, time_budget_s=None)
    shape = (train_cfg.batch_size, in_channels, *(int(s) for s in train_cfg.patch_size))
    elapsed: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = build_model(model_name, in_channels=in_channels, out_channels=out_channels).to(device)
        optimizer = make_optimizer(model, train_cfg)
        train(model=model, optimizer=optimizer, batches=_random_batches(shape, max(out_channels, 2), device),
              config=train_cfg, device=device, out_channels=out_channels, state=LoopState(model, optimizer),
              callbacks=[lambda s: elapsed.append(s.elapsed_s)])  # fmt: skip
    steps = [later - earlier for earlier, later in zip(elapsed[:-2], elapsed[1:-1], strict=True)]
    return statistics.median(steps)


def measure_window_seconds(
    model: torch.nn.Module,
    *,
    config: RunConfig,
    in_channels: int,
    device: torch.device | str,
    numerics: tuple[str, str],
) -> float:
    """Seconds per window of sliding-window prediction with the run's overlap, window batch and mirroring.

    Times the real predictor without mirroring on an image as long as one window batch along its first axis (at
    least two windows), after one warm-up call; the median of at least two calls (more, up to five, while under
    :data:`WINDOW_TIMING_S`) counts, as the jobs meet the same load. Mirroring runs every window 8
    times (flips are cheap next to the forward pass), so it multiplies the figure by 8. ``numerics`` is the resolved
    (precision, memory format).
    """
    from segbench.inference import sliding_window_predict
    from segbench.precision import prepare_model

    inference = config.inference
    patch = tuple(int(s) for s in config.train.patch_size)
    step = max(1, int(patch[0] * (1 - inference.overlap)))
    length = patch[0] + step * max(1, inference.batch_size - 1)  # about one full batch of windows
    image = torch.randn((in_channels, length, *patch[1:]), generator=torch.Generator().manual_seed(0))
    windows = window_count(image.shape[1:], patch, inference.overlap)
    prepare_model(model, precision=numerics[0], memory_format=numerics[1], device=device)

    def predict() -> float:
        tic = time.perf_counter()
        sliding_window_predict(model, image, patch_size=patch, overlap=inference.overlap,
                               batch_size=inference.batch_size, mirror=False, gaussian=inference.gaussian,
                               device=device, precision=numerics[0], memory_format=numerics[1])  # fmt: skip
        _synchronize(device)
        return time.perf_counter() - tic

    predict()
    started, calls = time.perf_counter(), [predict(), predict()]
    while len(calls) < 5 and time.perf_counter() - started < WINDOW_TIMING_S:
        calls.append(predict())
    return statistics.median(calls) / windows * (8 if inference.mirror else 1)


def _synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_case_overhead(geometry: CaseGeometry, label_path: Path, *, tolerance_mm: float) -> float:
    """Seconds to write one prediction and score it (reading its reference), timed on ``label_path``."""
    from segbench.data.nifti import read_label, write_nifti
    from segbench.metrics import compute_case_metrics

    tic = time.perf_counter()
    reference = read_label(label_path)
    labels = tuple(int(v) for v in np.unique(reference.array) if v != 0) or (1,)
    shifted = np.roll(reference.array, 1, axis=0)  # a plausible prediction: boundaries, distances to compute
    with tempfile.TemporaryDirectory() as folder:
        write_nifti(Path(folder) / "case.nii.gz", shifted, affine=reference.affine, spacing=reference.spacing)
    compute_case_metrics(shifted, reference.array, reference.spacing, labels=labels, tolerance_mm=tolerance_mm)
    return time.perf_counter() - tic


def prediction_buffers_mb(geometry: Sequence[CaseGeometry], patch: Sequence[int], out_channels: int) -> float:
    """MiB of the largest case's sliding-window accumulators: padded image, logits, weight sum (float32)."""
    if not geometry:
        return 0.0
    largest = max(math.prod(padded_shape(case.shape, patch)) * (case.channels + out_channels + 1) for case in geometry)
    return largest * 4 / 2**20


def estimate_run(
    config: RunConfig,
    *,
    jobs: Sequence[tuple[str, Sequence[str]]],
    geometry: Sequence[CaseGeometry],
    label_paths: dict[str, Path],
    in_channels: int,
    out_channels: int,
    device: str,
    cache: dict[str, Any],
) -> CostEstimate:
    """Measure and add up what ``jobs`` will cost on ``device`` (see the module docstring).

    Args:
        config: the run's config.
        jobs: the jobs still to run, each as (model, the validation case ids it predicts); not empty.
        geometry: every training case's geometry (:func:`segbench.geometry.read_geometry`).
        label_paths: case id -> its label file (to time writing and scoring a case).
        in_channels, out_channels: the models' channels.
        device: resolved device.
        cache: ``path``, ``cached`` (cases already prepared), ``bytes``, ``cases`` (:func:`segbench.data.cache.
            cache_state`).
    """
    from segbench.memory import estimate_memory
    from segbench.precision import resolve_memory_format, resolve_precision

    torch_device = torch.device(device)
    numerics = (resolve_precision(config.train.precision, torch_device),
                resolve_memory_format(config.train.memory_format, torch_device))  # fmt: skip
    patch, overlap = tuple(map(int, config.train.patch_size)), config.inference.overlap
    by_id = {case.case_id: case for case in geometry}
    per_model: dict[str, list[list[CaseGeometry]]] = {}
    for model, case_ids in jobs:  # each job's fold: the cases it predicts
        per_model.setdefault(model, []).append([by_id[c] for c in case_ids if c in by_id])
    predicted = [case for folds in per_model.values() for fold in folds for case in fold] or list(geometry)
    largest = max(geometry, key=lambda case: case.voxels)
    overhead = measure_case_overhead(largest, label_paths[largest.case_id], tolerance_mm=config.tolerance_mm)
    memory = estimate_memory(list(per_model), patch_size=patch, batch_size=config.train.batch_size,
                             precision=numerics[0], memory_format=numerics[1], optimizer=config.train.optimizer,
                             in_channels=in_channels, out_channels=out_channels).set_index("model")  # fmt: skip
    estimates = [
        _model_estimate(name, folds, config, channels=(in_channels, out_channels), device=torch_device,
                        numerics=numerics, case_overhead_s=overhead, peak_mb=float(memory.loc[name, "tensor_peak_mb"]))
        for name, folds in per_model.items()
    ]  # fmt: skip
    estimate = CostEstimate(
        models=tuple(estimates), device=device, precision=numerics[0], memory_format=numerics[1],
        windows_per_case=statistics.mean(window_count(c.shape, patch, overlap) for c in predicted),
        cases_per_job=len(predicted) / len(jobs) if jobs else 0.0, case_overhead_s=overhead,
        prediction_buffers_mb=prediction_buffers_mb(geometry, patch, out_channels), cache=dict(cache),
    )  # fmt: skip
    return dataclasses.replace(estimate, advice=tuple(prediction_advice(estimate, config, predicted)))


def _model_estimate(name: str, folds: list[list[CaseGeometry]], config: RunConfig, *, channels: tuple[int, int],
                    device: torch.device, numerics: tuple[str, str], case_overhead_s: float,
                    peak_mb: float) -> ModelEstimate:  # fmt: skip
    """One model's estimate: its step and window measured here, its jobs' training and prediction added up."""
    patch, overlap = tuple(map(int, config.train.patch_size)), config.inference.overlap
    step_s = measure_step_seconds(name, config=config, in_channels=channels[0], out_channels=channels[1],
                                  device=device)  # fmt: skip
    window_s = _window_seconds(name, config, channels[0], channels[1], device, numerics)
    iterations, train_s = _training(config, step_s)
    predict_s = statistics.mean(
        sum(window_count(c.shape, patch, overlap) * window_s + case_overhead_s for c in fold) for fold in folds
    )
    job_s = train_s + predict_s + JOB_SETUP_STEPS * step_s + JOB_SETUP_S
    return ModelEstimate(name, len(folds), step_s, iterations, train_s, window_s, predict_s, job_s, peak_mb)


def estimate_for_run(
    config: RunConfig,
    *,
    todo: Sequence,
    splits: list[dict],
    dataset,
    geometry: Sequence[CaseGeometry],
    device: str,
    cache: dict[str, Any],
) -> CostEstimate | None:
    """The estimate of a run's jobs still to run (``todo``: :class:`segbench.rundir.JobKey`), or ``None`` when none
    is left or a model cannot be measured (logged; its job will report why)."""
    from segbench.job import out_channels_for

    if not todo or not geometry:
        return None
    try:
        return estimate_run(
            config, jobs=[(key.model, splits[key.fold]["val"]) for key in todo], geometry=geometry,
            label_paths={case.case_id: case.label for case in dataset.training}, in_channels=len(dataset.channels),
            out_channels=out_channels_for(tuple(dataset.foreground_labels), loss=config.train.loss), device=device,
            cache=cache,
        )  # fmt: skip
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - an estimate must never stop a run: the job reports the model
        log.warning("no cost estimate (%s: %s)", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None
    finally:
        if torch.device(device).type == "cuda":  # give the timed steps' cached blocks back before the jobs start
            torch.cuda.empty_cache()


def estimate_in_child(gpu_id: str | None, config: RunConfig, **arguments: Any) -> CostEstimate | None:
    """:func:`estimate_for_run` (same arguments) in a spawned child process, seeing only GPU ``gpu_id`` when given.

    For CUDA runs whose jobs run in processes of their own: timing a step in the driver would leave a CUDA context
    (hundreds of MiB) in the driver, on GPU 0, for the whole run. The child's ends with it. ``None`` when the child
    fails (logged): an estimate never stops a run.
    """
    import multiprocessing
    import os

    if gpu_id is not None:
        arguments["device"] = "cuda"  # the child sees only that GPU, as cuda:0
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        if gpu_id is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu_id
        pool = multiprocessing.get_context("spawn").Pool(1)  # the child starts now, with this environment
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    try:
        with pool:
            return pool.apply(estimate_for_run, (config,), arguments)
    except Exception as exc:  # noqa: BLE001 - an estimate must never stop a run
        log.warning("no cost estimate (the measuring process failed: %s: %s)", type(exc).__name__, exc)
        return None


def _window_seconds(name: str, config: RunConfig, in_channels: int, out_channels: int, device: torch.device,
                    numerics: tuple[str, str]) -> float:  # fmt: skip
    from segbench.registry import build_model

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = build_model(name, in_channels=in_channels, out_channels=out_channels).to(device)
    return measure_window_seconds(model, config=config, in_channels=in_channels, device=device, numerics=numerics)


def _training(config: RunConfig, step_s: float) -> tuple[int, float]:
    """(iterations, seconds) of one job's training: the iteration budget at ``step_s``, or the time budget."""
    budget = config.train.time_budget_s
    if budget is not None:
        return int(budget / step_s) if step_s > 0 else 0, float(budget)
    return config.train.iterations, config.train.iterations * step_s


def prediction_advice(estimate: CostEstimate, config: RunConfig, cases: Sequence[CaseGeometry]) -> list[str]:
    """When prediction takes longer than training, the options that cut it, each with what it would save."""
    train = sum(m.train_s * m.jobs for m in estimate.models)
    predict = sum(m.predict_s * m.jobs for m in estimate.models)
    if predict <= train or predict <= 0:
        return []
    lines = [f"prediction ({_duration(predict)} over all jobs) takes longer than training "
             f"({_duration(train)}); to reduce it:"]  # fmt: skip
    inference = config.inference
    if inference.mirror:
        lines.append("  --no-mirror: 8x fewer forward passes (mirroring runs every window 8 times)")
    patch = tuple(int(s) for s in config.train.patch_size)
    fewer = statistics.mean(window_count(c.shape, patch, 0.25) for c in cases) if cases else math.inf
    if inference.overlap > 0.25 and fewer < estimate.windows_per_case:
        lines.append(f"  --overlap 0.25: {fewer:.3g} windows per case instead of {estimate.windows_per_case:.3g}")
    if config.target_spacing is None and config.plans is None:  # --plans fixes the spacing
        lines.append("  --target-spacing SD SH SW (coarser than the native spacing): fewer voxels, fewer windows")
    lines.append(f"  (writing and scoring take {estimate.case_overhead_s:.2g} s per case whatever the options)")
    return lines
