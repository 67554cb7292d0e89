"""Preprocessing cache: z-scored (optionally resampled) cases, or cases preprocessed with a plan as nnU-Net does it,
stored as memory-mappable ``.npy`` files.

Decoding a ``.nii.gz`` costs a full gzip inflate every time; training reads each case hundreds of
times, so every case is prepared once into ``cache_dir/<case_id>-<key>/``:

* ``image.npy``  ``(C, D, H, W)`` float32, each channel z-scored over the whole image (with a plan: cropped to the
  nonzero region, normalized and resampled by :mod:`segbench.data.plan_preprocess`, axes in the plan's order);
* ``label.npy``  ``(D, H, W)`` uint8 (absent for unlabelled cases);
* ``case.json``  the :class:`PreparedCase` metadata (original geometry for writing predictions back).

``key`` hashes the source files' fingerprints (resolved path, size, mtime in ns), the
:class:`PreprocessConfig` (with a plan: every setting it takes from the plan and the plans file's SHA-256) and
:data:`CACHE_FORMAT_VERSION`, so an edited file, a changed setting or another plan gets a new folder and a stale
cache is never read. Each folder is written under a temp name and renamed into
place, so concurrent runs preparing the same case never see (or leave) a half-written folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segbench.atomic import atomic_write_json
from segbench.data.plan_preprocess import Resampling, preprocess_with_plan, restore_labels, restore_scores
from segbench.errors import ConfigError, DatasetError
from segbench.inference import logits_to_labels

log = logging.getLogger(__name__)

#: Bumped whenever the cached arrays' meaning or layout changes; part of every cache key.
CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """How cases are prepared (recorded in the run manifest).

    Attributes:
        target_spacing: resample every case to this voxel size in mm (array-axis order); ``None`` keeps
            each case's own spacing.
        plan: a :class:`segbench.plans.reader.PlanSettings`: preprocess as nnU-Net does with that plan (then
            ``target_spacing`` must be ``None``: the plan sets the spacing).
    """

    target_spacing: tuple[float, float, float] | None = None  # None = keep the original spacing
    plan: Any = None  # PlanSettings or None (no plan: per-case z-score)

    def __post_init__(self) -> None:
        if self.plan is not None and self.target_spacing is not None:
            raise ConfigError("a target spacing and a plan both set the spacing; drop the target spacing")
        if self.target_spacing is not None:
            spacing = tuple(float(s) for s in self.target_spacing)
            if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
                raise ConfigError(f"target spacing must be three positive sizes in mm, got {self.target_spacing}")
            object.__setattr__(self, "target_spacing", spacing)


@dataclass(frozen=True)
class PreparedCase:
    """A case in the preprocessing cache.

    Attributes:
        case_id: the dataset's case id.
        image_path: ``.npy`` of the image ``(C, *shape)`` float32, z-scored per channel.
        label_path: ``.npy`` of the label ``(*shape)`` uint8, or ``None`` for an unlabelled case.
        original_shape: spatial shape of the source image (D, H, W).
        original_spacing: source voxel size in mm.
        spacing: voxel size of the prepared arrays in mm.
        affine: the source image's 4×4 affine, 16 values row-major (to write predictions back).
        shape: spatial shape of the prepared arrays.
        plan_axes: with a plan, the permutation of the source axes into the arrays' (plan) axis order.
        crop_bbox: with a plan, the nonzero crop ``(start, stop)`` per axis (plan axis order, source grid).
        probabilities_resampling: with a plan, how scores go back to the source grid (the plan's
            ``resampling_fn_probabilities_kwargs``: order, order_z, force_separate_z).
    """

    case_id: str
    image_path: Path
    label_path: Path | None
    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]
    spacing: tuple[float, float, float]
    affine: tuple[float, ...]
    shape: tuple[int, int, int]
    plan_axes: tuple[int, int, int] | None = None
    crop_bbox: tuple[tuple[int, int], ...] | None = None
    probabilities_resampling: dict[str, Any] | None = None

    @property
    def affine_matrix(self) -> np.ndarray:
        """The source affine as a 4×4 float array."""
        return np.asarray(self.affine, dtype=float).reshape(4, 4)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # Paths are stored relative to the case folder so a cache folder can be moved as a whole.
        data["image_path"] = self.image_path.name
        data["label_path"] = None if self.label_path is None else self.label_path.name
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], folder: Path) -> PreparedCase:
        return cls(
            case_id=str(data["case_id"]),
            image_path=folder / data["image_path"],
            label_path=None if data["label_path"] is None else folder / data["label_path"],
            original_shape=tuple(int(v) for v in data["original_shape"]),  # type: ignore[arg-type]
            original_spacing=tuple(float(v) for v in data["original_spacing"]),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in data["spacing"]),  # type: ignore[arg-type]
            affine=tuple(float(v) for v in data["affine"]),
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            plan_axes=None if data.get("plan_axes") is None else tuple(int(a) for a in data["plan_axes"]),  # type: ignore[arg-type]
            crop_bbox=None if data.get("crop_bbox") is None else tuple((int(a), int(b)) for a, b in data["crop_bbox"]),
            probabilities_resampling=data.get("probabilities_resampling"),
        )


def _fingerprint(path: Path) -> list:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist") from None
    return [os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns]


def cache_key(case: Any, config: PreprocessConfig) -> str:
    """Hex digest (16 chars) identifying ``case``'s source files and the preprocessing settings.

    Raises:
        DatasetError: a source file is missing.
    """
    sources = [_fingerprint(Path(p)) for p in case.images]
    label = None if case.label is None else _fingerprint(Path(case.label))
    settings = asdict(config)
    if settings["plan"] is None:  # entries made before plans existed keep their keys
        del settings["plan"]
    payload = json.dumps(
        {"version": CACHE_FORMAT_VERSION, "case_id": case.case_id, "images": sources, "label": label,
         "config": settings},
        sort_keys=True,
    )  # fmt: skip
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def case_folder(case: Any, config: PreprocessConfig, cache_dir: Path) -> Path:
    """The cache folder of ``case`` under ``config`` (it may not exist yet).

    Raises:
        DatasetError: a source file is missing.
    """
    return Path(cache_dir) / f"{case.case_id}-{cache_key(case, config)}"


def zscore(image: np.ndarray) -> np.ndarray:
    """Z-score each channel of ``image`` (C, D, H, W) over all its voxels; a constant channel becomes 0.

    Statistics are accumulated in float64 (a float32 sum over 10⁷ voxels loses digits); returns float32.
    """
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float64)
        mean, std = channel.mean(), channel.std()
        out[c] = (channel - mean) / (std if std > 0 else 1.0)
    return out


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, int, int]:
    """Spatial shape covering the same extent at ``target`` spacing (at least one voxel per axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


def _resample(array: np.ndarray, size: tuple[int, int, int], *, mode: str) -> np.ndarray:
    # torch interpolation with align_corners=False treats voxels as cells covering the same extent, which
    # is what a change of spacing means; restore_to_original uses the same convention, so it inverts it.
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    if mode == "trilinear":
        out = F.interpolate(tensor, size=size, mode="trilinear", align_corners=False)
    else:
        out = F.interpolate(tensor, size=size, mode="nearest-exact")
    return out[0].numpy()


def _read_case(case: Any) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float], np.ndarray]:
    """Read a case's channels and label through :func:`segbench.data.dataset.load_case` (validates shapes)."""
    from segbench.data.dataset import load_case

    image, label = load_case(case)
    if label is not None and label.array.dtype != np.uint8:
        raise DatasetError(f"{case.label} has label values above 255; segbench caches labels as uint8")
    return image.array, None if label is None else label.array, image.spacing, image.affine


def _arrays(case: Any, config: PreprocessConfig) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Read and prepare one case: (image, uint8 label or ``None``, the :class:`PreparedCase` fields but the paths)."""
    image, label, spacing, affine = _read_case(case)
    original_shape = tuple(int(s) for s in image.shape[1:])
    fields: dict[str, Any] = {
        "case_id": case.case_id,
        "original_shape": original_shape,
        "original_spacing": tuple(float(s) for s in spacing),
        "affine": tuple(float(v) for v in np.asarray(affine, dtype=float).reshape(-1)),
    }
    if config.plan is not None:
        planned = preprocess_with_plan(image, label, spacing, config.plan)
        seg = None if planned.seg is None else np.maximum(planned.seg, 0).astype(np.uint8)  # -1 (outside) -> 0
        resampling = config.plan.probabilities_resampling
        fields.update(
            spacing=tuple(float(s) for s in config.plan.spacing),
            shape=tuple(int(n) for n in planned.image.shape[1:]),
            plan_axes=planned.axes,
            crop_bbox=planned.bbox,
            probabilities_resampling=asdict(resampling),
        )
        return planned.image, seg, fields
    new_spacing, shape = spacing, original_shape
    if config.target_spacing is not None:
        shape = resampled_shape(original_shape, spacing, config.target_spacing)
        new_spacing = config.target_spacing
        if shape != original_shape:
            image = _resample(image, shape, mode="trilinear")
            if label is not None:
                label = _resample(label[None], shape, mode="nearest")[0].astype(np.uint8)
    fields.update(spacing=tuple(float(s) for s in new_spacing), shape=shape)
    return zscore(image), label, fields


def prepare_in_memory(case: Any, *, config: PreprocessConfig) -> tuple[np.ndarray, PreparedCase]:
    """Prepare one case without the cache (new images to segment): ``(image (C, *shape) float32, its description)``.

    The description's ``image_path`` is the case's first source file and ``label_path`` is ``None``; the arrays are
    exactly what :func:`prepare_case` would cache.

    Raises:
        DatasetError: a source file is missing, unreadable, or its channels disagree in shape.
    """
    image, _, fields = _arrays(replace(case, label=None) if getattr(case, "label", None) else case, config)
    return image, PreparedCase(image_path=Path(case.images[0]), label_path=None, **fields)


def prepare_case(case: Any, *, config: PreprocessConfig, cache_dir: Path) -> PreparedCase:
    """Prepare one case (duck-typed: ``case_id``, ``images`` paths, ``label`` path or ``None``) or reuse its cache.

    Raises:
        DatasetError: a source file is missing, unreadable, or its channels/label disagree in shape.
        OSError: the cache folder is not writable.
    """
    cache_dir = Path(cache_dir)
    folder = case_folder(case, config, cache_dir)
    meta_path = folder / "case.json"
    if meta_path.is_file():  # a cache hit: not logged per case (every job reads every case)
        return PreparedCase.from_json(json.loads(meta_path.read_text()), folder)

    image, label, fields = _arrays(case, config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        np.save(tmp / "image.npy", image)
        if label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
        prepared = PreparedCase(
            image_path=folder / "image.npy", label_path=None if label is None else folder / "label.npy", **fields
        )
        atomic_write_json(tmp / "case.json", prepared.to_json())  # fsyncs; written last
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "case.json").is_file():  # not a lost race with an identical writer
                raise
            log.debug("another process prepared %s first", case.case_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s -> %s", case.case_id, folder)
    return prepared


def prepare_dataset(
    spec: Any,
    *,
    config: PreprocessConfig,
    cache_dir: Path,
    cases: Iterable[Any] | None = None,
    progress: bool = False,
) -> dict[str, PreparedCase]:
    """Prepare (or reuse from the cache) the cases of a dataset.

    Args:
        spec: a DatasetSpec (duck-typed: ``.training`` and optionally ``.test`` sequences of cases with
            ``case_id``, ``images`` and ``label``).
        config: preprocessing settings.
        cache_dir: cache root; each case gets a sub-folder named ``<case_id>-<key>``.
        cases: case objects or case ids to prepare; ``None`` means every training case.
        progress: show a tqdm progress bar (one step per case).

    Returns:
        ``{case_id: PreparedCase}`` in the order of ``cases``.

    Raises:
        DatasetError: an unknown case id, or a missing/unreadable/inconsistent source file.
        OSError: the cache folder is not writable.
    """
    from tqdm.auto import tqdm

    known = {c.case_id: c for c in (*tuple(getattr(spec, "test", ())), *spec.training)}
    selected = []
    for item in spec.training if cases is None else cases:
        if isinstance(item, str):
            if item not in known:
                raise DatasetError(f"case {item!r} is not in the dataset; check the case ids you passed")
            item = known[item]
        selected.append(item)
    prepared: dict[str, PreparedCase] = {}
    for case in tqdm(selected, desc="preprocess", unit="case", disable=None if progress else True):
        prepared[case.case_id] = prepare_case(case, config=config, cache_dir=Path(cache_dir))
    log.debug("%d case(s) ready in %s", len(prepared), cache_dir)
    return prepared


def load_prepared(case: PreparedCase, *, mmap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Return ``(image (C, *shape) float32, label (*shape) uint8 or None)`` of a prepared case.

    With ``mmap=True`` the arrays are read-only memory maps: opening is instant and only the pages a
    patch touches are read.

    Raises:
        DatasetError: the cache files are missing (e.g. the cache folder was deleted while running).
    """
    mode = "r" if mmap else None
    try:
        image = np.load(case.image_path, mmap_mode=mode)
        label = None if case.label_path is None else np.load(case.label_path, mmap_mode=mode)
    except FileNotFoundError as exc:
        raise DatasetError(f"{exc.filename} is missing from the preprocessing cache; run again to rebuild it") from None
    return image, label


def restore_to_original(array: torch.Tensor, case: PreparedCase) -> torch.Tensor:
    """Resample per-class scores ``(K, *case.shape)`` back to ``(K, *case.original_shape)``.

    Trilinear (``align_corners=False``, the convention used when preparing), so logits or
    probabilities stay smooth; returns ``array`` itself when the case was not resampled.

    Raises:
        ValueError: ``array`` is not 4D or its spatial shape is not ``case.shape``.
    """
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(case.shape):
        raise ValueError(f"expected scores of shape (K, {', '.join(map(str, case.shape))}), got {tuple(array.shape)}")
    if tuple(case.shape) == tuple(case.original_shape):
        return array
    dtype = array.dtype
    work = array if array.is_floating_point() else array.float()
    out = F.interpolate(work[None], size=tuple(case.original_shape), mode="trilinear", align_corners=False)[0]
    return out.to(dtype)


def scores_in_source_geometry(scores: torch.Tensor, case: PreparedCase) -> np.ndarray:
    """Per-class scores ``(K, *case.shape)`` (e.g. probabilities) on the case's original grid, ``(K, *original)``.

    As :func:`labels_in_source_geometry` takes logits back, without the argmax: a plan's crop is undone with
    background (channel 0 = 1, the others 0; a single sigmoid channel 0) outside the cropped box.

    Raises:
        ValueError: ``scores`` is not ``(K, *case.shape)``.
    """
    if case.plan_axes is None:
        return restore_to_original(scores, case).float().numpy()
    if scores.ndim != 4 or tuple(scores.shape[1:]) != tuple(case.shape):
        raise ValueError(f"expected scores of shape (K, {', '.join(map(str, case.shape))}), got {tuple(scores.shape)}")
    return restore_scores(scores, **_plan_geometry(case))


def _plan_geometry(case: PreparedCase) -> dict[str, Any]:
    """How a plan-prepared case goes back to its source grid (keywords of ``restore_labels`` and ``restore_scores``)."""
    return {
        "axes": case.plan_axes,
        "bbox": case.crop_bbox,
        "plan_spacing": case.spacing,
        "source_spacing": tuple(case.original_spacing[a] for a in case.plan_axes),
        "source_shape": case.original_shape,
        "resampling": Resampling(**case.probabilities_resampling),
    }


def labels_in_source_geometry(logits: torch.Tensor, case: PreparedCase) -> np.ndarray:
    """Class indices ``(*case.original_shape)`` uint8 (0 background) from scores ``(K, *case.shape)``.

    A case prepared with a plan goes back as nnU-Net exports a prediction (scores resampled to the cropped grid,
    labels put back into the uncropped volume, axes restored: :func:`segbench.data.plan_preprocess.restore_labels`);
    any other case through :func:`restore_to_original`.

    Raises:
        ValueError: ``logits`` is not ``(K, *case.shape)``.
    """
    if case.plan_axes is None:
        return logits_to_labels(restore_to_original(logits, case))
    if logits.ndim != 4 or tuple(logits.shape[1:]) != tuple(case.shape):
        raise ValueError(f"expected scores of shape (K, {', '.join(map(str, case.shape))}), got {tuple(logits.shape)}")
    return restore_labels(logits, **_plan_geometry(case))
