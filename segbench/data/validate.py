"""Preflight validation: read every file of a dataset fully and report every problem, naming the file.

A benchmark that crashes on case 17 of fold 4 after hours of training wastes the whole run, so
``segbench run`` calls :func:`validate_dataset` before any job starts and ``segbench data check`` exposes it
directly. Checks, in order:

* dataset.json: readable, valid JSON, required keys, paths inside the folder, unique case ids;
* folders: files in ``imagesTr``/``labelsTr`` that belong to no case (problem), in ``imagesTs`` (warning);
  macOS ``._*`` / ``.DS_Store`` files are ignored and counted in one warning;
* every file: present, gzip stream intact to its end (CRC and length trailer: nibabel stops reading before
  the trailer, so a truncated or bit-flipped ``.nii.gz`` would otherwise load silently), readable by nibabel;
* images: channel count vs ``modality``/``channel_names``, NaN/inf voxels, positive spacing;
* labels: integral values, declared values only, same shape and spacing (relative tolerance
  :data:`SPACING_RTOL`) as the image; empty foreground and a differing affine are warnings.
"""

from __future__ import annotations

import gzip
import json
import logging
import statistics
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segbench.data.dataset import (
    NNUNET,
    Case,
    DatasetSpec,
    is_ignored_name,
    parse_dataset,
    strip_ending,
)
from segbench.data.nifti import Volume, read_image, read_label
from segbench.errors import DatasetError

log = logging.getLogger(__name__)

#: Relative tolerance when comparing image and label voxel spacing (headers often differ in the 6th digit).
SPACING_RTOL = 1e-3
#: Affine entries may differ by this much (mm) before a warning: labels exported by other tools round origins.
AFFINE_ATOL_MM = 1e-2
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of :func:`validate_dataset`.

    Attributes:
        problems: one sentence per problem, each naming the file (or dataset.json entry) at fault.
        warnings: one sentence per warning (the dataset is usable).
        summary: None if dataset.json could not be read; otherwise ``name``, ``format``, ``root``,
            ``training_cases``, ``test_cases``, ``channels``, ``labels`` (value -> name), ``shape_min`` /
            ``shape_max`` (per-axis D, H, W over all images, None if none was readable), ``spacing_min`` /
            ``spacing_max`` (mm), ``foreground_ml`` (label name -> {"min", "median", "max"} over training
            labels, in millilitres), ``files_read``, ``bytes_read`` (bytes on disk) and ``ignored_files``.
    """

    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    summary: dict | None

    @property
    def ok(self) -> bool:
        """True when there is no problem (warnings allowed)."""
        return not self.problems


def validate_dataset(path: str | Path, *, progress: bool = False) -> ValidationReport:
    """Check a dataset folder (MSD or nnU-Net v2 raw) by reading every listed file fully.

    Args:
        path: the dataset folder (holding dataset.json).
        progress: show a tqdm progress bar over files on stderr (hidden when stderr is not a terminal).

    Returns:
        A :class:`ValidationReport`; it never raises for a bad dataset (problems are listed instead).
    """
    try:
        spec, parse_problems = parse_dataset(path)
    except DatasetError as exc:
        return ValidationReport(problems=(str(exc),), warnings=(), summary=None)
    state = _State(spec=spec, problems=list(parse_problems))
    _check_counts(state)
    _check_folders(state)
    if not spec.training:
        state.problems.append(f"{spec.root} has no training cases; put labelled images in imagesTr and labelsTr")
    _check_files(state, progress=progress)
    if spec.ignored_files:
        examples = ", ".join(_rel(spec, p) for p in spec.ignored_files[:3])
        state.warnings.insert(
            0,
            f"ignored {len(spec.ignored_files)} macOS metadata file(s) (._* / .DS_Store) such as {examples}; "
            "they are never cases",
        )
    return ValidationReport(tuple(state.problems), tuple(state.warnings), state.summary())


def verify_gzip(path: Path) -> str | None:
    """Decompress ``path`` to its end in chunks, checking the gzip CRC-32 and length trailer.

    Memory stays at one chunk; costs about as much as one nibabel read. Files not ending in ``.gz`` pass.

    Returns:
        None if the stream is intact, else one sentence naming the file.
    """
    if not path.name.endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    except EOFError:
        return f"{path} is truncated (its gzip stream ends early); copy or download it again"
    except (gzip.BadGzipFile, zlib.error) as exc:
        return f"{path} is corrupted ({exc}); copy or download it again"
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror or exc})"
    return None


# --- internals ---------------------------------------------------------------------------------------------


@dataclass
class _State:
    spec: DatasetSpec
    problems: list[str]
    warnings: list[str] = field(default_factory=list)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    foreground_ml: dict[int, list[float]] = field(default_factory=dict)
    files_read: int = 0
    bytes_read: int = 0

    def summary(self) -> dict:
        spec = self.spec
        fg = {}
        for value in spec.foreground_labels:
            vols = self.foreground_ml.get(value, [])
            if vols:
                fg[spec.labels[value]] = {
                    "min": float(np.min(vols)),
                    "median": float(np.median(vols)),
                    "max": float(np.max(vols)),
                }
        return {
            "name": spec.name,
            "format": spec.format,
            "root": str(spec.root),
            "training_cases": len(spec.training),
            "test_cases": len(spec.test),
            "channels": list(spec.channels),
            "labels": dict(spec.labels),
            "shape_min": _axis_reduce(self.shapes, min),
            "shape_max": _axis_reduce(self.shapes, max),
            "shape_median": _axis_reduce(self.shapes, lambda axis: int(statistics.median_low(axis))),
            "spacing_min": _axis_reduce(self.spacings, min),
            "spacing_max": _axis_reduce(self.spacings, max),
            "foreground_ml": fg,
            "files_read": self.files_read,
            "bytes_read": self.bytes_read,
            "ignored_files": len(spec.ignored_files),
        }


def _axis_reduce(rows: list[tuple], reduce) -> list | None:
    return [reduce(axis) for axis in zip(*rows, strict=True)] if rows else None


def _rel(spec: DatasetSpec, path: Path) -> str:
    try:
        return path.relative_to(spec.root).as_posix()
    except ValueError:
        return str(path)


def _check_counts(state: _State) -> None:
    spec = state.spec
    try:
        meta = json.loads(spec.dataset_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # parse_dataset read it a moment ago; nothing more to say here
        return
    for key, cases in (("numTraining", spec.training), ("numTest", spec.test)):
        declared = meta.get(key)
        if isinstance(declared, int) and declared != len(cases):
            state.warnings.append(f"{spec.dataset_json} says {key} {declared} but {len(cases)} cases were found")


def _check_folders(state: _State) -> None:
    spec = state.spec
    listed = {p for case in (*spec.training, *spec.test) for p in (*case.images, case.label) if p is not None}
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        folder = spec.root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if is_ignored_name(path.name) or path.is_dir() or path in listed:
                continue
            message = _unlisted_message(spec, sub, path)
            # Stray test images do not affect training or evaluation, so they only warrant a warning.
            (state.warnings if sub == "imagesTs" else state.problems).append(message)


def _unlisted_message(spec: DatasetSpec, sub: str, path: Path) -> str:
    if spec.format != NNUNET:
        key = "test" if sub == "imagesTs" else "training"
        return f"{path} is in {sub} but not listed in dataset.json '{key}'; add it there or remove the file"
    if sub == "labelsTr":
        case_id = strip_ending(path.name, spec.file_ending)
        return f"{path} has no image {case_id}_0000{spec.file_ending} in imagesTr; add the image or remove the label"
    last = f"_{len(spec.channels) - 1:04d}"
    return (
        f"{path} is not a channel file <case>_0000{spec.file_ending} … <case>{last}{spec.file_ending} for the "
        f"{len(spec.channels)} channel(s) in dataset.json channel_names; rename or remove it"
    )


def _check_files(state: _State, *, progress: bool) -> None:
    from tqdm import tqdm

    spec = state.spec
    cases = [*spec.training, *spec.test]
    total = sum(len(c.images) + (c.label is not None) for c in cases)
    # disable=None lets tqdm hide the bar when stderr is not a terminal (logs, CI).
    with tqdm(total=total, unit="file", desc="checking", file=sys.stderr, disable=None if progress else True) as bar:
        for case in cases:
            bar.set_postfix_str(case.case_id, refresh=False)
            _check_case(state, case)
            bar.update(len(case.images) + (case.label is not None))


def _check_case(state: _State, case: Case) -> None:
    spec = state.spec
    files = [*case.images, *([case.label] if case.label is not None else [])]
    intact = True
    for path in files:
        problem = _missing_message(spec, case, path) if not path.is_file() else verify_gzip(path)
        if problem:
            state.problems.append(problem)
            intact = False
        else:
            state.bytes_read += path.stat().st_size
    if not intact:
        return  # a damaged file may still "load" with garbage, so nothing else of this case is trusted
    image = _read_case_image(state, case)
    if case.label is None:
        return
    try:
        label = read_label(case.label)
    except DatasetError as exc:
        state.problems.append(str(exc))
        return
    state.files_read += 1
    if image is not None:
        _check_geometry(state, case, image, label)
    _check_label_values(state, case, label)


def _missing_message(spec: DatasetSpec, case: Case, path: Path) -> str:
    if spec.format == NNUNET:
        if path == case.label:
            return f"{path} is missing: training case '{case.case_id}' has images in imagesTr but no label"
        return f"{path} is missing: case '{case.case_id}' needs one file per channel ({len(spec.channels)})"
    return f"{path} is listed in dataset.json but does not exist"


def _read_case_image(state: _State, case: Case) -> Volume | None:
    spec = state.spec
    volumes: list[Volume] = []
    ok = True
    for path in case.images:
        try:
            vol = read_image(path)
        except DatasetError as exc:
            state.problems.append(str(exc))
            ok = False
            continue
        state.files_read += 1
        ok &= _check_image_file(state, path, vol)
        volumes.append(vol)
    if not ok or not volumes:
        return None
    first = volumes[0]
    for path, vol in zip(case.images[1:], volumes[1:], strict=True):
        if vol.spatial_shape != first.spatial_shape:
            state.problems.append(
                f"{path} has shape {vol.spatial_shape} but {case.images[0].name} has {first.spatial_shape}; "
                "all channel files of a case must have the same shape"
            )
            return None
        if not _same_spacing(vol.spacing, first.spacing):
            state.problems.append(
                f"{path} has spacing {_fmt(vol.spacing)} mm but {case.images[0].name} has {_fmt(first.spacing)} mm; "
                "all channel files of a case must share one grid"
            )
            return None
    channels = sum(v.array.shape[0] for v in volumes)
    if channels != len(spec.channels) and spec.format != NNUNET:
        state.problems.append(
            f"{case.images[0]} has {channels} channel(s) but dataset.json modality declares {len(spec.channels)} "
            f"({', '.join(spec.channels)}); fix dataset.json or the image"
        )
        return None
    state.shapes.append(first.spatial_shape)
    state.spacings.append(first.spacing)
    return first


def _check_image_file(state: _State, path: Path, vol: Volume) -> bool:
    ok = True
    if state.spec.format == NNUNET and vol.array.shape[0] != 1:
        state.problems.append(
            f"{path} holds {vol.array.shape[0]} channels; nnU-Net images are one 3D file per channel "
            "(<case>_0000, <case>_0001, ...)"
        )
        ok = False
    bad = int(vol.array.size - np.count_nonzero(np.isfinite(vol.array)))
    if bad:
        state.problems.append(f"{path} contains {bad} NaN or infinite voxel(s); fix or re-export the image")
        ok = False
    if min(vol.spacing) <= 0:
        state.problems.append(f"{path} has non-positive voxel spacing {_fmt(vol.spacing)} mm in its header")
        ok = False
    return ok


def _check_geometry(state: _State, case: Case, image: Volume, label: Volume) -> None:
    if label.spatial_shape != image.spatial_shape:
        state.problems.append(
            f"{case.label} has shape {label.spatial_shape} but its image {case.images[0].name} has "
            f"{image.spatial_shape}; image and label must cover the same voxels"
        )
        return
    if not _same_spacing(label.spacing, image.spacing):
        state.problems.append(
            f"{case.label} has spacing {_fmt(label.spacing)} mm but its image {case.images[0].name} has "
            f"{_fmt(image.spacing)} mm; fix the label header"
        )
        return
    if not np.allclose(label.affine, image.affine, rtol=0, atol=AFFINE_ATOL_MM + SPACING_RTOL * np.abs(image.affine)):
        state.warnings.append(
            f"{case.label} has a different position/orientation (affine) than its image {case.images[0].name}; "
            "check that they overlap"
        )


def _check_label_values(state: _State, case: Case, label: Volume) -> None:
    spec = state.spec
    array = label.array
    if array.dtype == np.uint8:
        counts = np.bincount(array.ravel(), minlength=1)  # fast path: read_label gives uint8 when values fit
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(array, return_counts=True)
    undeclared = [int(v) for v in values if int(v) not in spec.labels]
    if undeclared:
        state.problems.append(
            f"{case.label} contains label value(s) {undeclared} not declared in dataset.json labels "
            f"{sorted(spec.labels)}; declare them or fix the label"
        )
    voxel_ml = float(np.prod(label.spacing)) / 1000.0
    present = dict(zip((int(v) for v in values), (int(c) for c in counts), strict=True))
    if not any(present.get(v, 0) for v in spec.foreground_labels):
        state.warnings.append(f"{case.label} has no foreground voxels (empty label)")
    for value in spec.foreground_labels:
        state.foreground_ml.setdefault(value, []).append(present.get(value, 0) * voxel_ml)


def _same_spacing(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= SPACING_RTOL * max(abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def _fmt(values: tuple[float, ...]) -> str:
    return "×".join(f"{v:.4g}" for v in values)
