"""Reading an nnU-Net v2 plans file (``nnUNetPlans.json`` or one ``segbench plan`` wrote) for ``segbench run --plans``.

:func:`read_plan` turns one configuration of a plans file (default ``3d_fullres``, ``inherits_from`` resolved as
nnU-Net resolves it) into a frozen :class:`PlanSettings`: what preprocessing and training take from it. Everything
segbench cannot do as nnU-Net would is refused with one sentence (a 2D configuration, another preprocessor or
resampling function, a reorienting reader). :func:`check_plan_fits` refuses a plan made for other data.

Axis order: a plan's spacing, patch and transposition refer to nnU-Net's reader order, which reverses the axes segbench
reads with nibabel (see :mod:`segbench.data.plan_preprocess`); the patch applies to the preprocessed arrays, which
are in the plan's order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segbench.data.plan_preprocess import Resampling
from segbench.errors import ConfigError, load_json_or_refuse

DEFAULT_CONFIGURATION = "3d_fullres"
#: nnU-Net's file names beside a plans file in ``nnUNet_preprocessed/DatasetXXX``.
DATASET_JSON = "dataset.json"
FINGERPRINT_JSON = "dataset_fingerprint.json"
# Readers whose axis order is nibabel's reversed, with no reorientation.
_READERS = ("SimpleITKIO", "NibabelIO")
_RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
_SCHEMES = ("ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization",
            "RGBTo01Normalization")  # fmt: skip
# A spacing read from a header and one a planner wrote as JSON agree to float32 precision.
_SPACING_RTOL = 1e-4


@dataclass(frozen=True)
class PlanSettings:
    """One configuration of a plans file: what ``segbench run --plans`` takes from it (plan axis order).

    Attributes:
        sha256: hex digest of the plans file's bytes (it keys the preprocessing cache: two plans never share it).
        configuration: the configuration's name (``3d_fullres``).
        dataset_name: the plan's ``dataset_name``.
        plans_name: the plan's ``plans_name`` (``nnUNetPlans``, ``nnUNetResEncUNetMPlans`` ...).
        spacing: target spacing in mm.
        transpose_forward, transpose_backward: nnU-Net's axis transposition.
        patch_size: training / inference patch in voxels.
        batch_size: patches per training step.
        normalization_schemes, use_mask_for_norm: per channel.
        intensity_properties: per channel, ``foreground_intensity_properties_per_channel`` (CT normalization).
        median_spacing: ``original_median_spacing_after_transp`` (mm), the fingerprint's median spacing.
        data_resampling, seg_resampling, probabilities_resampling: the three resampling settings.
        batch_dice: the Dice term of nnU-Net's loss pools the batch (one Dice per class) instead of averaging
            per-sample Dice (absent in a plans file: False).
    """

    sha256: str
    configuration: str
    dataset_name: str
    plans_name: str
    spacing: tuple[float, ...]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    normalization_schemes: tuple[str, ...]
    use_mask_for_norm: tuple[bool, ...]
    intensity_properties: tuple[dict[str, float], ...]
    median_spacing: tuple[float, ...] | None
    data_resampling: Resampling
    seg_resampling: Resampling
    probabilities_resampling: Resampling
    batch_dice: bool = False

    def record(self, path: str | Path) -> dict[str, Any]:
        """The manifest's ``plans`` entry: where the file came from, its hash and what the run took from it."""
        return {
            "path": str(Path(path).resolve()),
            "sha256": self.sha256,
            "configuration": self.configuration,
            "plans_name": self.plans_name,
            "dataset_name": self.dataset_name,
            "spacing": list(self.spacing),
            "patch_size": list(self.patch_size),
            "batch_size": self.batch_size,
            "normalization_schemes": list(self.normalization_schemes),
        }


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_plans_json(path: str | Path) -> dict[str, Any]:
    """The parsed plans file.

    Raises:
        ConfigError: missing, unreadable, not JSON, or not a plans file (no ``configurations``).
    """
    path = Path(path)
    plans = load_json_or_refuse(
        path,
        missing=f"--plans {path} does not exist; pass an nnU-Net plans file (e.g. nnUNetPlans.json)",
        unreadable=lambda exc: f"--plans {path} is not a readable JSON file ({exc})",
    )
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise ConfigError(f"--plans {path} is not an nnU-Net plans file: it has no 'configurations' mapping")
    return plans


def resolve_configuration(plans: dict[str, Any], name: str, path: str | Path) -> dict[str, Any]:
    """Configuration ``name`` with ``inherits_from`` resolved (the child's keys win), as nnU-Net resolves it.

    Raises:
        ConfigError: an unknown configuration or an inheritance cycle.
    """
    configurations = plans["configurations"]
    chain: list[str] = []
    while name not in chain:
        if name not in configurations:
            raise ConfigError(f"--configuration {name} is not in the plans file {path}; it has "
                              f"{', '.join(configurations)}")  # fmt: skip
        chain.append(name)
        parent = configurations[name].get("inherits_from")
        if parent is None:
            merged: dict[str, Any] = {}
            for link in reversed(chain):
                merged.update({k: v for k, v in configurations[link].items() if k != "inherits_from"})
            return merged
        name = parent
    raise ConfigError(f"the plans file {path} has an inheritance cycle: {' -> '.join([*chain, name])}")


def read_plan(path: str | Path, configuration: str = DEFAULT_CONFIGURATION) -> PlanSettings:
    """The settings of one configuration of the plans file at ``path``.

    Raises:
        ConfigError: one sentence naming the file and what segbench cannot use (see the module docstring).
    """
    plans = load_plans_json(path)
    config = resolve_configuration(plans, configuration, path)
    where = f"--plans {path} (configuration {configuration})"
    _check_supported(plans, config, where)
    channels = len(config["normalization_schemes"])
    intensities = plans.get("foreground_intensity_properties_per_channel") or {}
    try:
        return PlanSettings(
            sha256=file_sha256(path),
            configuration=configuration,
            dataset_name=str(plans.get("dataset_name", "")),
            plans_name=str(plans.get("plans_name", "")),
            spacing=tuple(float(s) for s in config["spacing"]),
            transpose_forward=tuple(int(a) for a in plans["transpose_forward"]),
            transpose_backward=tuple(int(a) for a in plans["transpose_backward"]),
            patch_size=tuple(int(s) for s in config["patch_size"]),
            batch_size=int(config["batch_size"]),
            normalization_schemes=tuple(str(s) for s in config["normalization_schemes"]),
            use_mask_for_norm=tuple(bool(m) for m in config["use_mask_for_norm"]),
            intensity_properties=tuple(dict(intensities.get(str(c)) or {}) for c in range(channels)),
            median_spacing=_floats(plans.get("original_median_spacing_after_transp")),
            data_resampling=_resampling(config, "resampling_fn_data_kwargs", where),
            seg_resampling=_resampling(config, "resampling_fn_seg_kwargs", where),
            probabilities_resampling=_resampling(config, "resampling_fn_probabilities_kwargs", where),
            batch_dice=bool(config.get("batch_dice", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where} lacks or garbles the entry {exc}; write it with nnU-Net or `segbench plan`"
        ) from None


def _floats(values: Any) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(v) for v in values)


def _resampling(config: dict[str, Any], key: str, where: str) -> Resampling:
    kwargs = dict(config.get(key) or {})
    order_z = int(kwargs.get("order_z", 0))
    if order_z != 0:
        raise ConfigError(f"{where}: {key} has order_z {order_z}; segbench resamples the thick axis with order 0 "
                          "only (nnU-Net's default); set order_z to 0")  # fmt: skip
    force = kwargs.get("force_separate_z")
    return Resampling(
        order=int(kwargs.get("order", 1)), order_z=0, force_separate_z=None if force is None else bool(force)
    )


def _check_supported(plans: dict[str, Any], config: dict[str, Any], where: str) -> None:
    """Refuse what segbench's preprocessing would not do as nnU-Net does."""
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    problems = [
        (len(config.get("patch_size") or ()) != 3,
         "is not a 3D configuration; choose --configuration 3d_fullres (or another 3D one)"),
        (config.get("preprocessor_name", "DefaultPreprocessor") != "DefaultPreprocessor",
         f"uses the preprocessor {config.get('preprocessor_name')}; segbench reproduces nnU-Net's DefaultPreprocessor"),
        (reader not in _READERS,
         f"reads images with {reader}; segbench supports plans whose reader keeps the file's voxel order "
         f"({', '.join(_READERS)})"),
        (any(config.get(f"resampling_fn_{kind}", _RESAMPLING_FUNCTION) != _RESAMPLING_FUNCTION
             for kind in ("data", "seg", "probabilities")),
         f"uses another resampling function than nnU-Net's default {_RESAMPLING_FUNCTION}"),
        (any(s not in _SCHEMES for s in config.get("normalization_schemes") or ()),
         f"names an unknown normalization scheme ({', '.join(config.get('normalization_schemes') or ())}); "
         f"known: {', '.join(_SCHEMES)}"),
        (len(config.get("use_mask_for_norm") or ()) != len(config.get("normalization_schemes") or ()),
         "has use_mask_for_norm and normalization_schemes of different lengths"),
    ]  # fmt: skip
    for failed, message in problems:
        if failed:
            raise ConfigError(f"{where} {message}")


def _name_forms(name: str) -> set[str]:
    """``Dataset002_Heart`` / ``Task02_Heart`` / ``Heart``: a name and the name without nnU-Net's or MSD's prefix."""
    stripped = re.sub(r"^(Dataset\d{3}|Task\d{2,3})_", "", name)
    return {name.casefold(), stripped.casefold()} - {""}


def case_spacings(dataset: Any) -> np.ndarray:
    """``(cases, 3)`` voxel spacings of the training cases in nnU-Net's reader order (headers only, mm)."""
    import nibabel as nib

    from segbench.errors import DatasetError

    spacings = []
    for case in dataset.training:
        try:
            zooms = nib.load(str(case.images[0])).header.get_zooms()[:3]
        except Exception as exc:  # nibabel raises many types for a bad header
            raise DatasetError(f"{case.images[0]} is not a readable NIfTI file ({exc})") from None
        spacings.append([float(z) for z in zooms][::-1])
    return np.asarray(spacings, dtype=float).reshape(-1, 3)


def _read_sibling(plans_path: Path, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((plans_path.parent / name).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def fit_problems(plan: PlanSettings, plans_path: str | Path, dataset: Any) -> list[str]:
    """Why the plan does not fit ``dataset`` (a DatasetSpec), one phrase each; empty when it fits.

    Compared: the channel count; the dataset name (nnU-Net's ``Dataset002_Heart`` matches a folder or dataset.json
    name ``Heart``, ``Task02_Heart`` ...); the labels, when nnU-Net's ``dataset.json`` lies beside the plans file;
    the number of cases and their spacings, when ``dataset_fingerprint.json`` lies beside it; the plan's median
    spacing (``original_median_spacing_after_transp``) against the dataset's.
    """
    plans_path = Path(plans_path)
    problems = []
    if len(plan.normalization_schemes) != len(dataset.channels):
        problems.append(f"it plans {len(plan.normalization_schemes)} channel(s) but the dataset has "
                        f"{len(dataset.channels)} ({', '.join(dataset.channels)})")  # fmt: skip
    names = _name_forms(dataset.name) | _name_forms(Path(dataset.root).name)
    if plan.dataset_name and not (_name_forms(plan.dataset_name) & names):
        problems.append(f"it was made for dataset {plan.dataset_name}, not {Path(dataset.root).name}")
    labels = (_read_sibling(plans_path, DATASET_JSON) or {}).get("labels")
    if isinstance(labels, dict):
        planned = sorted(int(v) for v in labels.values() if isinstance(v, int | float) and int(v) != 0)
        if planned != sorted(dataset.foreground_labels):
            problems.append(f"its {DATASET_JSON} declares the labels {planned}, the dataset "
                            f"{list(dataset.foreground_labels)}")  # fmt: skip
    problems += _fingerprint_problems(plan, plans_path, case_spacings(dataset))
    return problems


def _fingerprint_problems(plan: PlanSettings, plans_path: Path, spacings: np.ndarray) -> list[str]:
    fingerprint = _read_sibling(plans_path, FINGERPRINT_JSON) or {}
    planned = fingerprint.get("spacings")
    if isinstance(planned, list):
        if len(planned) != len(spacings):
            return [f"its {FINGERPRINT_JSON} has {len(planned)} cases, the dataset {len(spacings)}"]
        ours = np.asarray(sorted(map(tuple, spacings)))
        theirs = np.asarray(sorted(tuple(map(float, s)) for s in planned))
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, rtol=_SPACING_RTOL):
            return [f"the case spacings in its {FINGERPRINT_JSON} differ from the dataset's"]
    if plan.median_spacing is not None and len(spacings):
        median = np.median(spacings, axis=0)[list(plan.transpose_forward)]
        if not np.allclose(median, plan.median_spacing, rtol=_SPACING_RTOL):
            return [f"it was planned for a median spacing of {_mm(plan.median_spacing)} mm, the dataset's is "
                    f"{_mm(median)} mm (another fingerprint)"]  # fmt: skip
    return []


def _mm(values: Any) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


def check_plan_fits(plan: PlanSettings, plans_path: str | Path, dataset: Any) -> None:
    """Refuse a plan made for other data (:func:`fit_problems`).

    Raises:
        ConfigError: one sentence naming the plans file, the dataset and every mismatch.
    """
    problems = fit_problems(plan, plans_path, dataset)
    if problems:
        raise ConfigError(f"--plans {plans_path} does not fit the dataset {dataset.root}: {'; '.join(problems)}; "
                          "plan this dataset with `segbench plan` (or nnU-Net) and pass that file")  # fmt: skip


def config_with_plan(config: Any, plan: PlanSettings, *, keep: tuple[str, ...] = ()) -> Any:
    """``config`` (a RunConfig) with the plan's patch and batch size, except the ``train`` fields named in ``keep``
    (flags the user gave on purpose)."""
    taken = {"patch_size": tuple(plan.patch_size), "batch_size": int(plan.batch_size),
             "batch_dice": bool(plan.batch_dice)}  # fmt: skip
    taken = {k: v for k, v in taken.items() if k not in keep}
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **taken))
