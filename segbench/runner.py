"""The (model × fold) grid: preflight, run directory, resume, dispatch to an executor, tables, report.

Dataflow of :func:`run_comparison`::

    dataset (default synthetic or --data) → preflight (every file read fully) → models (registry) → splits
    → RUN_DIR/manifest.json + splits.json → preprocessing cache → one job per (model, fold, repeat) → metrics.csv,
    jobs.csv
    → postprocessing decided on each finished model's folds (postprocessing.json, metrics_postprocessed.csv)
    → report

Resume (``resume=True``) compares the stored manifest with the new request and refuses a changed config, model
list, split, dataset or training numerics (CPU vs CUDA), naming each difference; it skips jobs that already have a
final result and continues the others from their checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segbench import __version__, results, rundir, stop
from segbench.atomic import atomic_write_bytes, atomic_write_json
from segbench.config import RunConfig, config_differences, config_to_dict
from segbench.data.cache import cache_state, record_use
from segbench.data.dataset import DatasetSpec, dataset_fingerprint, load_dataset
from segbench.data.preprocess import PreprocessConfig, prepare_dataset
from segbench.data.synth_tasks import TASKS, task_of
from segbench.data.validate import validate_dataset
from segbench.errors import ConfigError, DatasetError, RunDirectoryError
from segbench.estimate import CostEstimate, estimate_for_run, estimate_in_child
from segbench.executors.base import Executor, as_executor, parse_device
from segbench.executors.inprocess import InProcessExecutor
from segbench.geometry import read_geometry
from segbench.job import JobSpec, network_plan_of_run, out_channels_for
from segbench.locking import RunLock
from segbench.matching import Matching, match_run
from segbench.metrics import nsd_tolerance_warning
from segbench.patch_advice import (  # noqa: F401 - plan_patch, warn_small_patch re-exported
    PATCH_VOXEL_BUDGET,
    patch_source,
    patch_warnings,
    plan_patch,
    warn_small_patch,
)
from segbench.paths import preprocessed_cache
from segbench.probabilities import missing_probabilities
from segbench.profiling import environment_info
from segbench.recipes.catalog import recipe_record
from segbench.registry import builder_module, model_info, module_source, network_plan_scope, resolve_models
from segbench.splits import resolve_splits, save_splits

log = logging.getLogger(__name__)

# Outcomes that a resume keeps: they are what this config produces, rerunning would give the same.
FINAL_STATUSES = ("done", "diverged", "oom")
# Config fields that do not change results; a resume may change them freely.
OPERATIONAL_KEYS = (
    "device", "job_timeout_s", "train.num_workers", "train.checkpoint_every", "inference.save_probabilities",
)  # fmt: skip


@dataclass(frozen=True)
class RunOutcome:
    """What a finished ``run_comparison`` call produced."""

    run_dir: Path
    expected_jobs: int  # models × folds × repeats
    results: list[results.JobResult]
    problems: list[str]  # unreadable job results met while rebuilding the tables
    report_dir: Path | None

    @property
    def all_done(self) -> bool:
        done = {(r.model, r.fold, r.repeat) for r in self.results if r.status == "done"}
        return not self.problems and len(done) == self.expected_jobs == len(self.results)


def resolve_device(requested: str) -> str:
    """``auto`` → ``cuda`` when available else ``cpu``; an unavailable or malformed device is a :class:`ConfigError`."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} requested but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0 … "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    return requested


def default_run_dir() -> Path:
    """``./segbench-runs/run-YYYYmmdd-HHMMSS`` (a new folder for every run)."""
    return Path("segbench-runs") / time.strftime("run-%Y%m%d-%H%M%S")


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and prove it is writable before any work starts.

    Raises:
        RunDirectoryError: it cannot be created or written to.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise RunDirectoryError(
            f"cannot write to the output folder {run_dir} ({exc.strerror}); choose another --out"
        ) from None


def preflight_dataset(
    path: Path, *, progress: bool, tolerance_mm: float | None = None
) -> tuple[DatasetSpec, dict[str, Any]]:
    """Validate every file of the dataset fully: the dataset and its summary (shapes, spacings, ...).

    With ``tolerance_mm`` (the run's NSD tolerance), also warn when it is below the dataset's largest voxel spacing.

    Raises:
        DatasetError: one sentence listing the problems found.
    """
    report = validate_dataset(path, progress=progress)
    warnings = list(report.warnings)
    spacing = (report.summary or {}).get("spacing_max")
    if tolerance_mm is not None and spacing:
        warnings.append(nsd_tolerance_warning(tolerance_mm, spacing, flag="--tolerance-mm") or "")
    for warning in filter(None, warnings):
        log.warning(warning)
    if not report.ok:
        listed = "; ".join(report.problems[:5])
        more = f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
        raise DatasetError(
            f"dataset {path} failed preflight with {len(report.problems)} problem(s): {listed}{more}; "
            f"run `segbench data check {path}` for the full list"
        )
    return load_dataset(path), report.summary or {}


def check_models_early(config: RunConfig) -> None:
    """Unknown model names, and a patch a model cannot take, fail here: before any image is read (or the default
    dataset generated). Channels come from ``--data``'s dataset.json when it parses (preflight reports it otherwise).

    Raises:
        ModelError: an unknown model name or pattern. ConfigError: a patch a model's divisor does not divide, or
            ``--data synth:NAME`` with an unknown NAME.
    """
    models = resolve_models(",".join(config.models))
    in_channels, out_channels = 1, 1
    task = task_of(config.data)  # an unknown synth:NAME fails here
    if task is not None:
        labels = [int(value) for value in TASKS[task].labels if int(value) != 0]
        out_channels = out_channels_for(tuple(labels), loss=config.train.loss)
    else:
        try:
            spec = load_dataset(config.data)
            in_channels, out_channels = (
                len(spec.channels),
                out_channels_for(tuple(spec.foreground_labels), loss=config.train.loss),
            )
        except DatasetError:
            pass  # preflight names the dataset's problem next
    check_patch(models, tuple(config.train.patch_size), in_channels, out_channels, source=patch_source(config))


def check_patch(
    models: list[str], patch_size: tuple[int, ...], in_channels: int, out_channels: int, *, source: str = "--patch"
) -> int:
    """Every model must accept the common patch: each side divisible by the model's divisor; returns their lcm.

    ``source`` names where the patch came from in the error (``--patch``, or a plans file's patch_size).
    """
    common = 1
    for name in models:
        divisor = model_info(name, in_channels=in_channels, out_channels=out_channels).divisor
        common = math.lcm(common, divisor)
        if any(int(size) % divisor for size in patch_size):
            raise ConfigError(
                f"{source} {' '.join(map(str, patch_size))} does not suit model {name}, whose input sizes must be "
                f"divisible by {divisor}; choose a patch whose sides are multiples of {divisor}"
                + (" with --patch D H W" if source != "--patch" else "")
            )
    return common


def build_manifest(
    config: RunConfig,
    dataset: DatasetSpec,
    models: list[str],
    dataset_path: Path,
    *,
    command: str | None = None,
    imports: Sequence[str] = (),
    matching: Matching | None = None,
) -> dict[str, Any]:
    """``manifest.json``: version, command line, --import modules, config, models, dataset, environment, matching."""
    matched = {"matching": matching.as_dict()} if matching is not None else {}
    return {
        "segbench_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command or "(Python API: segbench.runner.run_comparison)",
        "imports": {module: module_source(module) for module in imports},
        "config": config_to_dict(config),
        "models": models,
        "dataset": {
            "path": str(dataset_path.resolve()),
            "name": dataset.name,
            "task": task_of(config.data),  # the embedded task (heart, ct_lesion, thin), None for a dataset folder
            "format": dataset.format,
            "fingerprint": dataset_fingerprint(dataset),
            "num_training": len(dataset.training),
            "channels": list(dataset.channels),
            "labels": {str(k): v for k, v in sorted(dataset.labels.items()) if k != 0},
        },
        "environment": environment_info(),
        **matched,
    }


def device_type(device: str) -> str | None:
    """``"cpu"`` or ``"cuda"`` for a resolved device string; ``None`` for ``auto`` (not resolved yet, e.g. Slurm)."""
    return None if device == "auto" else torch.device(device).type


def numerics_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Changes of the device type (CPU ↔ CUDA) between two manifests: they change training numerics.

    ``cuda:0`` → ``cuda:1`` is no difference; an unresolved ``auto`` (Slurm) is never compared. A change of
    ``train.precision`` is a config difference already.
    """
    before, after = old.get("device_type"), new.get("device_type")
    if before is None or after is None or before == after:
        return []
    return [f"device: {before} -> {after} (training on another device type changes the numerics)"]


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between a stored manifest and a resume request (results-affecting fields only)."""
    old_config, new_config = _with_defaults(old["config"]), _with_defaults(new["config"])
    for key in OPERATIONAL_KEYS:
        section, _, leaf = key.rpartition(".")
        for cfg in (old_config, new_config):
            target = cfg.get(section, {}) if section else cfg
            target.pop(leaf, None)
    differences = [f"config {line}" for line in config_differences(old_config, new_config)]
    differences += numerics_differences(old, new)
    differences += plans_differences(old.get("plans"), new.get("plans"))
    if old["models"] != new["models"]:
        differences.append(f"models: {', '.join(old['models'])} -> {', '.join(new['models'])}")
    if old["dataset"]["fingerprint"] != new["dataset"]["fingerprint"]:
        differences.append(f"dataset {new['dataset']['path']} changed (fingerprint differs)")
    return differences


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the defaults of keys added since it was written (a missing key is no difference)."""
    defaults = config_to_dict(RunConfig())
    merged = {**{k: v for k, v in defaults.items() if k not in ("train", "inference")}, **stored}
    for section in ("train", "inference"):
        if isinstance(stored.get(section), dict):
            merged[section] = {**defaults[section], **stored[section]}
    return merged


def plans_differences(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """A plans file whose content changed since the run started (same path, other SHA-256).

    ``old`` and ``new`` are manifests' ``plans`` entries (``None`` without ``--plans``; another path or
    ``--configuration`` is a config difference already).
    """
    if not old or not new:
        return []
    if old.get("sha256") != new.get("sha256"):
        return [f"the plans file {new.get('path')} changed since the run started (its SHA-256 differs from the copy "
                f"in {rundir.PLANS_FILE})"]  # fmt: skip
    return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirectoryError(
            f"{path} is missing or unreadable ({exc.__class__.__name__}); this run directory cannot be resumed, "
            "start a new run with another --out"
        ) from None


def _check_run_dir(run_dir: Path, manifest: dict, splits: list, *, resume: bool) -> None:
    """Refuse a new run into a folder that holds one, and a resume whose request differs from the stored run.

    Called before anything costly (the cost estimate), and again by :func:`_prepare_run_dir` before it writes.

    Raises:
        RunDirectoryError: naming the folder, the differences and the way out.
    """
    manifest_path = rundir.manifest_path(run_dir)
    if manifest_path.exists() and not resume:
        raise RunDirectoryError(
            f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out for a new run"
        )
    if resume and manifest_path.exists():
        differences = manifest_differences(_read_json(manifest_path), manifest)
        if _read_json(rundir.splits_path(run_dir)) != splits:
            differences.append(f"splits differ from the stored {rundir.SPLITS_FILE}")
        if differences:
            raise RunDirectoryError(
                f"cannot resume {run_dir}: the request differs from the stored run ("
                + "; ".join(differences)
                + "); rerun with the original settings, or start a new run with another --out"
            )


def _prepare_run_dir(run_dir: Path, manifest: dict, splits: list, *, resume: bool) -> None:
    _check_run_dir(run_dir, manifest, splits, resume=resume)
    manifest_path = rundir.manifest_path(run_dir)
    if resume and manifest_path.exists():
        old = _read_json(manifest_path)
        # Operational settings (device, time limit, workers) may change on resume; jobs read them from here.
        updated = {**old, "config": manifest["config"], "device_type": old.get("device_type")}
        updated["resumes"] = [
            *old.get("resumes", []),
            {
                "at": manifest["created_at"],
                "command": manifest["command"],
                "environment": manifest["environment"],
                **{key: manifest[key] for key in ("estimate", "cache") if key in manifest},
            },
        ]
        atomic_write_json(manifest_path, updated)
        return
    # splits first, manifest last: a run directory with a manifest is always complete.
    save_splits(rundir.splits_path(run_dir), splits)
    atomic_write_json(manifest_path, manifest)


def plan_jobs(
    run_dir: Path, models: list[str], folds: int, repeats: int = 1, *, probabilities: bool = False
) -> tuple[list[rundir.JobKey], list[str]]:
    """Jobs of the (model × fold × repeat) grid still to run (no final result yet) and the problems met reading.

    With ``probabilities`` (``--save-probabilities``), a ``done`` job with a prediction lacking its probabilities
    file runs again too: it continues from its final checkpoint and only predicts those cases again.
    """
    scan = results.scan_results(run_dir)
    finished = {rundir.JobKey(r.model, r.fold, r.repeat) for r in scan.results if r.status in FINAL_STATUSES
                and not (probabilities and r.status == "done" and missing_probabilities(run_dir, r))}  # fmt: skip
    grid = [rundir.JobKey(m, f, r, repeats) for m in models for f in range(folds) for r in range(repeats)]
    return [key for key in grid if key not in finished], scan.problems


@dataclass(frozen=True)
class ResumePlan:
    """What a resume does with each job of the grid: keep its result, continue it from a checkpoint, or restart it.

    Each entry is ``(model, fold, why)``, e.g. ``("unet", 1, "killed, checkpoint kept")``.
    """

    kept: list[tuple[str, int, str]]
    continued: list[tuple[str, int, str]]
    restarted: list[tuple[str, int, str]]


def plan_resume(
    run_dir: Path, models: list[str], folds: int, repeats: int = 1, *, probabilities: bool = False
) -> ResumePlan:
    """Sort the jobs of a run being resumed into kept (a final result), continued (a checkpoint) and restarted.

    With repeats, ``why`` names the repeat (``"repeat 1: killed, from its checkpoint"``). With ``probabilities``, a
    done job lacking probabilities files is continued (:func:`plan_jobs`).
    """
    status = {(r.model, r.fold, r.repeat): r.status for r in results.scan_results(run_dir).results}
    if probabilities:
        status.update({key: "done without probabilities" for key, value in status.items() if value == "done" and
                       missing_probabilities(run_dir, rundir.JobKey(*key, repeats))})  # fmt: skip
    kept, continued, restarted = [], [], []
    for key in (rundir.JobKey(m, f, r, repeats) for m in models for f in range(folds) for r in range(repeats)):
        folder = rundir.job_dir(run_dir, key)
        was = status.get((key.model, key.fold, key.repeat), "stopped" if folder.is_dir() else "not started")
        prefix = f"repeat {key.repeat}: " if repeats > 1 else ""
        if was in FINAL_STATUSES:
            kept.append((key.model, key.fold, prefix + was))
        elif (folder / rundir.CHECKPOINT_LATEST).is_file() or (folder / rundir.CHECKPOINT_PREVIOUS).is_file():
            continued.append((key.model, key.fold, f"{prefix}{was}, from its checkpoint"))
        else:
            restarted.append((key.model, key.fold, prefix + was))
    return ResumePlan(kept, continued, restarted)


def run_comparison(
    config: RunConfig,
    *,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    executor: Executor | Callable[[list[JobSpec]], Any] | None = None,
    cache_dir: Path | None = None,
    report: bool = True,
    imports: Sequence[str] = (),
    command: str | None = None,
    on_resume: Callable[[ResumePlan], None] | None = None,
    on_estimate: Callable[[CostEstimate], None] | None = None,
) -> RunOutcome:
    """Train and evaluate every (model, fold, repeat) job of ``config`` in ``run_dir``.

    Args:
        config: the resolved run configuration (same recipe for every model).
        run_dir: output folder (created; must be new unless ``resume``).
        resume: continue an interrupted run in ``run_dir`` (which must hold one).
        progress: show progress bars (stderr).
        executor: an :class:`~segbench.executors.base.Executor` or a callable running a list of :class:`JobSpec`.
            Default: all jobs in this process (monkeypatches apply; peak RSS depends on earlier jobs; a crash ends
            the run); ``LocalExecutor()``: one fresh process per job.
        cache_dir: preprocessing cache root (default: the user cache).
        report: write ``RUN_DIR/report`` at the end.
        imports: modules that register the run's own models (``--import``), recorded in the manifest and imported
            by every job process before it runs (plus those of :func:`job_imports`).
        command: the command line, recorded in the manifest (and shown in the report's provenance).
        on_resume: called with the :class:`ResumePlan` before a resumed run starts its jobs.
        on_estimate: when given, the cost of the jobs still to run is measured (:mod:`segbench.estimate`, seconds
            on a small run), recorded in ``manifest.json`` (a resume's in its ``resumes`` entry) and passed to it
            before the first job. Not for Slurm runs (their device is only known on the nodes).

    Raises:
        SegbenchError subclasses for any preflight problem, before anything is trained; a run directory this call
        created is removed again when that happens (nothing but an empty folder would be left).
    """
    run_dir = Path(run_dir)
    if resume and not rundir.manifest_path(run_dir).is_file():
        raise RunDirectoryError(
            f"no run to resume in {run_dir} (it has no {rundir.MANIFEST_FILE}); check the --out path, or drop "
            "--resume to start a new run"
        )
    executor = as_executor(executor) if executor is not None else InProcessExecutor()
    stop.clear()  # a previous interrupted call in this process must not stop this one
    created = _first_missing(run_dir)
    check_writable(run_dir)
    try:
        with RunLock(run_dir), network_plan_scope(network_plan_of_run(config, run_dir)):
            return _run_locked(config, run_dir, resume=resume, progress=progress, executor=executor,
                               cache_dir=cache_dir, report=report, imports=tuple(imports), command=command,
                               on_resume=on_resume, on_estimate=on_estimate)  # fmt: skip
    except BaseException:
        if created is not None and not rundir.manifest_path(run_dir).exists():
            _remove_unused(run_dir, created)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet; ``None`` when ``path`` exists."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _remove_unused(run_dir: Path, created: Path) -> None:
    """Remove the folder a failed run created (only its lock file inside) and the empty parents it created."""
    (run_dir / rundir.RUN_LOCK_FILE).unlink(missing_ok=True)
    rundir.plans_path(run_dir).unlink(missing_ok=True)  # the plan's copy, written before the manifest
    folder = run_dir
    while True:
        try:
            folder.rmdir()  # only ever an empty folder: anything else inside is kept
        except OSError:
            return
        if folder == created:
            return
        folder = folder.parent


def _run_locked(config: RunConfig, run_dir: Path, *, resume: bool, progress: bool, executor: Executor,
                cache_dir: Path | None, report: bool, imports: tuple[str, ...], command: str | None,
                on_resume: Callable[[ResumePlan], None] | None,
                on_estimate: Callable[[CostEstimate], None] | None) -> RunOutcome:  # fmt: skip
    """:func:`run_comparison` once the run directory is locked."""
    check_models_early(config)  # before any image is read (or the default dataset generated)
    dataset_path, dataset, _ = _checked_dataset(config, cache_dir=cache_dir, progress=progress)
    # A remote executor (Slurm) resolves the device where the job runs, not on this (login) node; it checks it here.
    resolve = getattr(executor, "check_device", str) if executor.resolves_device else resolve_device
    device = resolve(config.device)
    models, matching, divisor = _selected_models(config, dataset, device)
    # Jobs in other processes import what registered their models: refuse what they cannot import, up front.
    job_modules = job_imports(models, imports, strict=not getattr(executor, "runs_in_process", False))
    plan, plans_source = _run_plan(config, dataset, run_dir, resume=resume)
    geometry = read_geometry(dataset.training, target_spacing=config.target_spacing, plan=plan)
    channels = (len(dataset.channels), out_channels_for(tuple(dataset.foreground_labels), loss=config.train.loss))
    for warning in patch_warnings(config, geometry=geometry, models=models, divisor=divisor, device=device,
                                  channels=channels, planned=not resume):  # fmt: skip
        log.warning(warning)
    case_ids = [case.case_id for case in dataset.training]
    splits = resolve_splits(config.splits, case_ids, folds=config.folds, seed=config.seed)
    manifest = build_manifest(config, dataset, models, dataset_path, command=command, imports=imports,
                              matching=matching)  # fmt: skip
    manifest["device_type"] = device_type(device)
    if plan is not None:
        manifest["plans"] = plan.record(config.plans)
    manifest["recipe"] = recipe_record(config, plan=plan)
    _check_run_dir(run_dir, manifest, splits, resume=resume)  # before the estimate's seconds, and before any write
    if plan is not None and not rundir.manifest_path(run_dir).exists():  # a new run: the copy before the manifest
        atomic_write_bytes(rundir.plans_path(run_dir), plans_source.read_bytes())
    preprocess_dir = preprocessed_cache(cache_dir)
    preprocess_config = PreprocessConfig(target_spacing=config.target_spacing, plan=plan)
    manifest["cache"] = cache_state(dataset, preprocess_config, preprocess_dir, geometry)
    keep = config.inference.save_probabilities  # done jobs without their probabilities files run again
    if on_estimate is not None and not executor.resolves_device:
        todo, _ = plan_jobs(run_dir, models, len(splits), config.repeats, probabilities=keep)
        estimate = measure_estimate(executor, config, todo=todo, splits=splits, dataset=dataset, geometry=geometry,
                                    device=device, cache=manifest["cache"])  # fmt: skip
        if estimate is not None:
            manifest["estimate"] = estimate.as_dict()
            on_estimate(estimate)
    _prepare_run_dir(run_dir, manifest, splits, resume=resume)
    if resume and on_resume is not None:
        on_resume(plan_resume(run_dir, models, len(splits), config.repeats, probabilities=keep))

    prepared = prepare_dataset(dataset, config=preprocess_config, cache_dir=preprocess_dir, progress=progress)
    record_use(preprocess_dir, name=dataset.name, dataset_path=dataset_path,
               folders=[case.image_path.parent for case in prepared.values()])  # fmt: skip
    common = {"device": device, "cache_dir": str(preprocess_dir), "progress": progress, "imports": job_modules}
    specs = [JobSpec(run_dir=str(run_dir), model=k.model, fold=k.fold, repeat=k.repeat, repeats=k.repeats, **common)
             for k in _jobs_to_run(run_dir, models, splits, config.repeats, probabilities=keep)]  # fmt: skip
    try:
        executor(specs)
    finally:
        scan = results.rebuild_tables(run_dir)
    _postprocess(run_dir, scan.results)
    report_dir = _write_report(run_dir) if report else None
    expected = len(models) * len(splits) * config.repeats
    return RunOutcome(run_dir, expected, scan.results, scan.problems, report_dir)


def measure_estimate(executor: Executor, config: RunConfig, *, device: str, **arguments: Any) -> CostEstimate | None:
    """The cost estimate (:func:`segbench.estimate.estimate_for_run`), measured where it leaves no trace.

    On CUDA, for jobs that run in processes of their own, it is measured in a child process on the first GPU the jobs
    will use (:func:`segbench.estimate.estimate_in_child`): in the driver it would hold a CUDA context on GPU 0 for the
    whole run. In-process jobs share the driver's context anyway, so there it is measured in the driver.
    """
    if device_type(device) == "cuda" and not getattr(executor, "runs_in_process", True):
        gpus = executor.gpu_ids_for(device) if hasattr(executor, "gpu_ids_for") else None
        return estimate_in_child(gpus[0] if gpus else None, config, device=device, **arguments)
    return estimate_for_run(config, device=device, **arguments)


def job_imports(models: Sequence[str], extra: Sequence[str] = (), *, strict: bool = False) -> tuple[str, ...]:
    """Modules a job process must import to know the run's models and metrics: ``extra``, then each module that
    registered one of ``models`` or a metric at run time (built-in ones import themselves).

    A model or metric registered in the script being run (``__main__``) cannot be imported by a job process.

    Raises:
        ConfigError: with ``strict`` (jobs run in other processes), for a model registered in ``__main__``; a metric
            there only gets a warning (its column stays empty for those jobs).
    """
    from segbench.metrics import metric_catalogue

    found = [*extra, *(builder_module(name) for name in models)]
    if strict and "__main__" in found:
        name = next(name for name in models if builder_module(name) == "__main__")
        raise ConfigError(
            f"model {name!r} is registered in the script being run (__main__), which job processes cannot import; "
            "register it in an importable module (e.g. a file next to the script) or run with --in-process"
        )
    found += [getattr(metric.compute, "__module__", None) or "" for metric in metric_catalogue()]
    if strict and "__main__" in found:
        log.warning("a metric is registered in the script being run (__main__): job processes cannot import it, so "
                    "their results lack it; register it in an importable module or run with --in-process")  # fmt: skip
    wanted = [module for module in found if module and module != "__main__" and module.split(".")[0] != "segbench"]
    return tuple(dict.fromkeys(wanted))


def _selected_models(config: RunConfig, dataset: DatasetSpec, device: str) -> tuple[list[str], Matching | None, int]:
    """The models to train: ``--models`` resolved and checked against the patch; with ``--match`` each family member
    becomes the width whose cost matches the reference's (those names are what is trained and shown). Also the
    least common multiple of the models' divisors (for patch planning)."""
    models = resolve_models(",".join(config.models))
    out_channels = out_channels_for(tuple(dataset.foreground_labels), loss=config.train.loss)
    divisor = check_patch(models, tuple(config.train.patch_size), len(dataset.channels), out_channels,
                          source=patch_source(config))  # fmt: skip
    matching = match_run(config, models, in_channels=len(dataset.channels), out_channels=out_channels, device=device)
    return (matching.resolved if matching is not None else models), matching, divisor


def _run_plan(config: RunConfig, dataset: DatasetSpec, run_dir: Path, *, resume: bool) -> tuple[Any, Path | None]:
    """The run's plan (``--plans``) checked against the dataset, and the file it was read from; ``(None, None)``
    without one. A resumed run whose plans file is gone reads the copy in the run directory.

    Raises:
        ConfigError: the plans file is unreadable, unsupported or does not fit the dataset.
    """
    if config.plans is None:
        return None, None
    from segbench.plans.reader import check_plan_fits, read_plan

    source = Path(config.plans)
    if resume and not source.exists() and rundir.plans_path(run_dir).is_file():
        log.warning("%s is gone: resuming with the run's copy %s", source, rundir.plans_path(run_dir))
        source = rundir.plans_path(run_dir)
    plan = read_plan(source, config.configuration)
    check_plan_fits(plan, source, dataset)
    train = config.train
    if (tuple(train.patch_size), train.batch_size) != (tuple(plan.patch_size), plan.batch_size):
        log.warning("patch %s and batch size %d differ from the plan's %s and %d (recorded in %s)",
                    "x".join(map(str, train.patch_size)), train.batch_size, "x".join(map(str, plan.patch_size)),
                    plan.batch_size, rundir.MANIFEST_FILE)  # fmt: skip
    return plan, source


def _jobs_to_run(
    run_dir: Path, models: list[str], splits: list, repeats: int, *, probabilities: bool
) -> list[rundir.JobKey]:
    """The jobs without a final result (or without their probabilities), logging how many a resume keeps."""
    todo, _ = plan_jobs(run_dir, models, len(splits), repeats, probabilities=probabilities)
    skipped = len(models) * len(splits) * repeats - len(todo)
    if skipped:
        log.info("resume: %d job(s) already finished, %d to run", skipped, len(todo))
    return todo


def _checked_dataset(
    config: RunConfig, *, cache_dir: Path | None, progress: bool
) -> tuple[Path, DatasetSpec, dict[str, Any]]:
    """The run's dataset (``--data``, or the default synthetic one, generated on first use), preflighted, with the
    preflight summary.

    Raises:
        DatasetError: preflight found problems, or the dataset declares no foreground label.
    """
    from segbench.data.synth import resolve_data

    dataset_path = resolve_data(config.data, cache_dir=cache_dir)
    dataset, summary = preflight_dataset(dataset_path, progress=progress, tolerance_mm=config.tolerance_mm)
    if not dataset.foreground_labels:
        raise DatasetError(f"{dataset_path}/dataset.json declares no foreground label")
    return dataset_path, dataset, summary


def _postprocess(run_dir: Path, found: list[results.JobResult]) -> None:
    """Decide, store and score each finished model's postprocessing (:mod:`segbench.run_postprocessing`)."""
    from segbench.run_postprocessing import postprocess_run

    try:
        postprocess_run(run_dir, found=found)
    except Exception as exc:  # like the report: never at the cost of the results, which are complete
        log.warning("could not decide the postprocessing (%s: %s); the tables in %s are complete, `segbench run "
                    "--resume` tries again", type(exc).__name__, exc, run_dir)  # fmt: skip


def _write_report(run_dir: Path) -> Path | None:
    try:
        from segbench.report import write_report
    except ImportError:
        return None
    try:
        return write_report(run_dir)
    except Exception as exc:  # the report must never cost the user their results
        log.warning("could not write the report (%s: %s); the tables in %s are complete", type(exc).__name__, exc,
                    run_dir)  # fmt: skip
        return None
