"""Plan a dataset folder and write the plans file: what ``segbench plan`` does, as two functions."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from segbench.atomic import atomic_write_text
from segbench.data.dataset import MSD, DatasetSpec, load_dataset
from segbench.errors import ConfigError
from segbench.plans.fingerprint import DatasetFingerprint, extract_fingerprint
from segbench.plans.planner import ExperimentPlan, plan_experiment
from segbench.plans.presets import get_preset
from segbench.plans.writer import dumps, fingerprint_path, plans_to_json
from segbench.rundir import PLANS_FILE

log = logging.getLogger(__name__)

_MSD_TASK = re.compile(r"^Task(?P<id>\d+)_(?P<name>.+)$")


def nnunet_dataset_name(spec: DatasetSpec) -> str:
    """The name nnU-Net knows the dataset by: the folder name (``Dataset002_Heart``); an MSD ``Task02_Heart``
    folder becomes ``Dataset002_Heart``, the name nnU-Net's MSD conversion gives it."""
    name = Path(spec.root).resolve().name if spec.root.name in ("", ".") else spec.root.name
    match = _MSD_TASK.match(name)
    if spec.format == MSD and match:
        return f"Dataset{int(match['id']):03d}_{match['name']}"
    return name


def plan_dataset(
    data: str | Path,
    *,
    preset: str = "nnunet",
    fingerprint: DatasetFingerprint | None = None,
    gpu_memory_gb: float | None = None,
    progress: bool = False,
) -> ExperimentPlan:
    """Fingerprint the dataset at ``data`` (MSD task or nnU-Net v2 raw folder) and plan it with ``preset``.

    Args:
        data: the dataset folder (holding dataset.json).
        preset: ``nnunet``, ``resenc-m``, ``resenc-l`` or ``resenc-xl``.
        fingerprint: reuse a fingerprint of this dataset instead of extracting it again.
        gpu_memory_gb: nnU-Net's VRAM target instead of the preset's (``-gpu_memory_target``), GB.
        progress: show a progress bar while fingerprinting.

    Raises:
        DatasetError: the folder or a file is unreadable, or there is no labelled case.
        ConfigError: unknown preset.
    """
    planner = get_preset(preset)
    if gpu_memory_gb is not None:
        if not gpu_memory_gb > 0:
            raise ConfigError(f"--gpu-memory must be a positive number of GB, got {gpu_memory_gb}")
        planner = dataclasses.replace(planner, gpu_memory_gb=float(gpu_memory_gb))
    spec = load_dataset(data)
    if fingerprint is None:
        fingerprint = extract_fingerprint(spec, progress=progress)
    return plan_experiment(
        fingerprint,
        planner,
        dataset_name=nnunet_dataset_name(spec),
        channel_names=spec.channels,
        num_classes=len(spec.labels),
        num_training=len(spec.training),
    )


def write_plan(plan: ExperimentPlan, out: str | Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``plan`` to ``out`` and its fingerprint beside it (:func:`~segbench.plans.writer.fingerprint_path`),
    each atomically.

    Returns:
        ``(plans_path, fingerprint_path)``.

    Raises:
        ConfigError: ``out`` or its fingerprint file exists and ``force`` is False, or ``out`` is a folder.
    """
    out = Path(out)
    check_outputs(out, force=force)
    finger = fingerprint_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(finger, dumps(plan.fingerprint.to_json()))
    atomic_write_text(out, dumps(plans_to_json(plan)))
    log.info("wrote %s and %s", out, finger)
    return out, finger


def check_outputs(out: str | Path, *, force: bool = False) -> None:
    """Refuse, before any work, to write a plan to ``out`` when it or its fingerprint file exists (without ``force``).

    Raises:
        ConfigError: naming the file and the way out.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / PLANS_FILE}")
    for path in (out, fingerprint_path(out)):
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists; pass --force to overwrite it or --out to write elsewhere")


def planned_for_run(data: str | Path, *, preset: str = "nnunet", cache_dir: str | Path | None = None) -> Path:
    """Plan the dataset at ``data`` for a run whose recipe needs a plan but got no ``--plans``; the plans file's path.

    The file lies in the cache (``<cache>/plans/<dataset name>-<hash of the folder's path>/``, with its
    fingerprint beside it) and is written again on every call: planning is deterministic, so a resumed run finds the
    same SHA-256 unless the dataset changed, which the resume then reports. The run copies it into its directory.

    Raises:
        DatasetError, ConfigError: as :func:`plan_dataset`.
    """
    import hashlib

    from segbench.paths import cache_root

    root = Path(data).resolve()
    plan = plan_dataset(root, preset=preset)
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    folder = cache_root(cache_dir) / "plans" / f"{plan.dataset_name}-{digest}"
    path, _ = write_plan(plan, folder / f"{get_preset(preset).plans_name}.json", force=True)
    return path
