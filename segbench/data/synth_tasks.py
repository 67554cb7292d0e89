"""The embedded synthetic tasks: one generator per task, and the table that names them (``--task``, ``synth:NAME``).

Three tasks of different character, so that a comparison (and a leaderboard across datasets) runs offline:

* ``heart`` — the Task02-like left-atrium MRI phantom of :mod:`segbench.data.phantom` (the default dataset);
* ``ct_lesion`` — an anisotropic CT-like crop (0.8 × 0.8 × 4 mm, intensities in HU) with two labels: an organ,
  and a small hypodense lesion inside it that 3 of every 10 cases lack (an empty reference for label 2);
* ``thin`` — branching vessel-like tubes 1–3 voxels across among bright round distractors, where a one-voxel
  offset halves the Dice and surface metrics (NSD, HD95) tell a near miss from a missed branch.

Every case is a pure function of ``(seed, split, index)`` as for the heart phantom; docs/tasks.md describes each
task (what it tests and why, shapes, spacing, labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segbench.data.phantom import (
    DEFAULT_SHAPE,
    GENERATOR_VERSION,
    PhantomCase,
    PhantomConfig,
    _curve_distance,
    _rotation,
    _smooth_noise,
    _unit,
    case_ids,
    centred_affine,
    check_shape,
    generate_case,
    grid_mm,
    mr_acquisition,
)
from segbench.errors import ConfigError

#: ``--data synth:NAME`` names an embedded task.
SYNTH_PREFIX = "synth:"


@dataclass(frozen=True)
class CTLesionConfig:
    """Knobs of the CT-like organ-and-lesion generator (ranges ``(low, high)`` drawn uniformly per case).

    Lengths in mm, intensities in Hounsfield units; the axes are (in-plane, in-plane, slice).
    """

    # Thin in-plane voxels and thick slices (ratio 5): nnU-Net's planner treats such data as anisotropic.
    spacing: tuple[float, float, float] = (0.8, 0.8, 4.0)
    # Organ: an irregular ellipsoid elongated along the slice axis (a kidney-like crop), slightly tilted.
    organ_radius_mm: tuple[float, float] = (10.0, 14.0)  # in-plane
    organ_half_length_mm: tuple[float, float] = (24.0, 34.0)  # along the slice axis
    organ_aspect: tuple[float, float] = (0.8, 1.0)  # second in-plane radius relative to the first
    organ_irregularity: float = 0.08
    position_jitter_mm: tuple[float, float, float] = (2.0, 2.0, 6.0)
    max_rotation_deg: float = 10.0
    # Cases whose index modulo 10 is listed have no lesion (3 of every 10: empty references for label 2).
    lesion_free: tuple[int, ...] = (2, 5, 8)
    lesion_radius_mm: tuple[float, float] = (5.0, 8.5)  # 2–5 slices, 12–21 voxels across in-plane
    two_lesions: float = 0.25  # probability of a second lesion in a case that has one
    lesion_contrast_hu: tuple[float, float] = (-100.0, -50.0)  # hypodense, relative to the organ
    # Neighbours: a contrast-filled vessel as bright as the organ beyond a thin fat gap, muscle, bone, bowel gas.
    organ_hu: tuple[float, float] = (110.0, 160.0)
    vessel_hu: tuple[float, float] = (120.0, 190.0)
    vessel_radius_mm: tuple[float, float] = (3.0, 5.0)
    vessel_gap_mm: tuple[float, float] = (1.5, 3.5)
    fat_hu: float = -100.0
    muscle_hu: float = 45.0
    bone_hu: tuple[float, float] = (500.0, 900.0)
    gas_hu: float = -900.0
    texture_hu: float = 12.0
    # Acquisition: partial-volume blur (voxels, in-plane and across slices) and correlated noise (HU).
    blur_sigma_voxels: tuple[float, float, float] = (0.6, 0.6, 0.35)
    noise_hu: tuple[float, float] = (10.0, 20.0)


@dataclass(frozen=True)
class ThinConfig:
    """Knobs of the vessel-tree generator (ranges ``(low, high)`` drawn uniformly per case).

    Lengths in voxels (the spacing is isotropic), intensities relative to a thick vessel (1.0).
    """

    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    trees: tuple[int, int] = (1, 2)
    generations: int = 4  # root, then three levels of bifurcations: up to 15 segments per tree
    # Radius 0.75 voxels is the smallest that keeps an oblique tube connected on the voxel grid.
    root_radius: tuple[float, float] = (1.2, 1.45)
    radius_ratio: float = 0.75
    min_radius: float = 0.75
    root_length: tuple[float, float] = (14.0, 20.0)
    length_ratio: tuple[float, float] = (0.65, 0.85)
    branch_angle_deg: tuple[float, float] = (25.0, 50.0)
    # Bright round blobs (as bright as the vessels, not tubular): intensity alone cannot find the vessels.
    blobs: tuple[int, int] = (3, 6)
    blob_radius: tuple[float, float] = (1.8, 2.6)
    blob_intensity: tuple[float, float] = (0.8, 1.0)
    tissue_intensity: float = 0.25
    texture_amplitude: float = 0.05
    # Acquisition (MRA-like, as :func:`segbench.data.phantom.mr_acquisition`).
    blur_sigma_voxels: float = 0.5
    bias_amplitude: float = 0.2
    snr: tuple[float, float] = (8.0, 14.0)
    intensity_scale: tuple[float, float] = (100.0, 1000.0)


@dataclass(frozen=True)
class SynthTask:
    """One embedded task: how its cases are generated and what its ``dataset.json`` says."""

    name: str  # --task NAME, --data synth:NAME
    dataset_name: str  # dataset.json "name": distinct per task
    summary: str  # dataset.json "description", before " (generator vN, seed S)"
    modality: str
    labels: dict[str, str]
    version: int  # bumped whenever the task's generated bytes change; part of its cache folder name
    default_shape: tuple[int, int, int]
    config_type: type
    generate: Callable[..., PhantomCase]  # (rng, *, shape, index, config) -> PhantomCase
    case_ids: Callable[..., tuple[list[str], list[str]]]  # (*, cases, test_cases) -> (training ids, test ids)


def _numbered_ids(prefix: str) -> Callable[..., tuple[list[str], list[str]]]:
    def ids(*, cases: int, test_cases: int) -> tuple[list[str], list[str]]:
        if cases < 0 or test_cases < 0:
            raise ConfigError("--cases and --test-cases must be non-negative")
        names = [f"{prefix}_{i:03d}" for i in range(1, cases + test_cases + 1)]
        return names[:cases], names[cases:]

    return ids


def ct_lesion_case(
    rng: np.random.Generator, *, shape: tuple[int, int, int], index: int, config: CTLesionConfig | None = None
) -> PhantomCase:
    """One CT-like case: an organ (label 1) holding 0–2 small hypodense lesions (label 2), in HU.

    Args:
        rng: the case's random generator (all randomness comes from it).
        shape: spatial shape (in-plane, in-plane, slices), each at least 8.
        index: the case's index in its split; ``index % 10`` in ``config.lesion_free`` means no lesion.
        config: generator knobs; default :class:`CTLesionConfig`.

    Returns:
        image (D, H, W) int16 HU, label uint8 {0, 1, 2}, affine ``diag(spacing)`` centred on the origin.

    Raises:
        ConfigError: a side of ``shape`` is smaller than 8.
    """
    cfg = config or CTLesionConfig()
    shape = check_shape(shape)
    spacing = np.asarray(cfg.spacing, dtype=float)
    points = grid_mm(shape, spacing)
    extent = np.asarray(shape) * spacing
    # Draw order: organ, lesions, neighbours, image.
    radius = min(rng.uniform(*cfg.organ_radius_mm), 0.3 * extent[:2].min())
    radii = np.array([radius, radius * rng.uniform(*cfg.organ_aspect), 0.0])
    radii[2] = min(rng.uniform(*cfg.organ_half_length_mm), 0.35 * extent[2])
    centre = rng.uniform(-1, 1, size=3) * np.minimum(cfg.position_jitter_mm, 0.1 * extent)
    local = (points - centre) @ _rotation(rng, cfg.max_rotation_deg)
    surface = _smooth_noise(rng, shape, sigma=(6.0, 6.0, 1.2)).reshape(-1)
    organ = (np.linalg.norm(local / radii, axis=1) < 1.0 + cfg.organ_irregularity * surface).reshape(shape)
    lesion = np.zeros(shape, dtype=bool)
    if index % 10 not in cfg.lesion_free:
        for _ in range(1 + int(rng.uniform() < cfg.two_lesions)):
            lesion |= _lesion(rng, organ, points, spacing, cfg)
    lesion &= ndimage.binary_erosion(organ)  # inside: organ tissue on every side of the lesion, even across slices
    label = organ.astype(np.uint8) + lesion.astype(np.uint8)
    image = _ct_image(rng, shape, spacing, points, centre, organ, lesion, cfg)
    return PhantomCase(image, label, centred_affine(shape, spacing))


def _lesion(rng: np.random.Generator, organ: np.ndarray, points, spacing, cfg: CTLesionConfig) -> np.ndarray:
    """An irregular round lesion whose centre lies at least its radius (+1 mm) inside the organ: (D, H, W) bool."""
    depth = ndimage.distance_transform_edt(organ, sampling=spacing).reshape(-1)  # mm to the organ's outside
    radius = min(rng.uniform(*cfg.lesion_radius_mm), max(depth.max() - 1.0, 0.0))
    inside = np.flatnonzero(depth >= radius + 1.0)
    if radius <= 0.0 or inside.size == 0:  # an organ too small to hold one (tiny test shapes)
        return np.zeros(organ.shape, dtype=bool)
    centre = points[inside[rng.integers(inside.size)]]
    wobble = _smooth_noise(rng, organ.shape, sigma=(3.0, 3.0, 0.6)).reshape(-1)
    return (np.linalg.norm(points - centre, axis=1) < radius * (1.0 + 0.12 * wobble)).reshape(organ.shape)


def _ct_image(rng, shape, spacing, points, centre, organ, lesion, cfg: CTLesionConfig) -> np.ndarray:
    """HU image: fat, muscle and bone on one side, bowel gas, a bright vessel on the other, organ, lesion; int16."""
    flat_organ = organ.reshape(-1)
    outside = ndimage.distance_transform_edt(~organ, sampling=spacing).reshape(-1)  # mm from the organ
    angle = rng.uniform(0, 2 * np.pi)
    side = np.array([np.cos(angle), np.sin(angle), 0.0])  # towards the vessel; muscle and bone the other way
    across = np.array([-side[1], side[0], 0.0])  # towards the gas
    rel = points - centre
    along = rel @ side
    half = np.abs(along)[flat_organ].max() if flat_organ.any() else 1.0  # the organ's half-width along `side`
    texture = cfg.texture_hu * _smooth_noise(rng, shape, sigma=(2.0, 2.0, 0.5)).reshape(-1)
    image = cfg.fat_hu + texture
    clear = outside > 2.0  # neighbours keep a 2 mm fat rim around the organ
    image = np.where((-along > half + rng.uniform(3.0, 6.0)) & clear, cfg.muscle_hu + texture, image)
    bone = np.linalg.norm((rel + side * (half + rng.uniform(14.0, 20.0)))[:, :2], axis=1) < 7.0
    image = np.where(bone & clear, rng.uniform(*cfg.bone_hu), image)
    gas = np.linalg.norm((rel - across * rng.uniform(16.0, 20.0)) / np.array([4.0, 4.0, 10.0]), axis=1) < 1.0
    image = np.where(gas & clear, cfg.gas_hu, image)
    gap, v_radius = rng.uniform(*cfg.vessel_gap_mm), rng.uniform(*cfg.vessel_radius_mm)
    v_dir = _unit(np.array([0.0, 0.0, 1.0]) + rng.normal(0, 0.15, size=3))
    to_vessel = rel - side * (half + gap + v_radius)
    vessel = np.linalg.norm(to_vessel - (to_vessel @ v_dir)[:, None] * v_dir, axis=1) < v_radius
    image = np.where(vessel & (outside > gap), rng.uniform(*cfg.vessel_hu), image)
    organ_hu = rng.uniform(*cfg.organ_hu)
    image = np.where(flat_organ, organ_hu + 0.5 * texture, image)
    lesion_hu = organ_hu + rng.uniform(*cfg.lesion_contrast_hu)
    image = np.where(lesion.reshape(-1), lesion_hu + 0.5 * texture, image)
    image = ndimage.gaussian_filter(image.reshape(shape), sigma=cfg.blur_sigma_voxels)
    noise = _smooth_noise(rng, shape, sigma=(0.7, 0.7, 0.3)) * rng.uniform(*cfg.noise_hu)
    return np.clip(np.rint(image + noise), -1024, 3071).astype(np.int16)


def thin_case(
    rng: np.random.Generator, *, shape: tuple[int, int, int], index: int = 0, config: ThinConfig | None = None
) -> PhantomCase:
    """One vessel-tree case: branching tubes 1–3 voxels across (label 1) among bright round blobs (background).

    Args:
        rng: the case's random generator (all randomness comes from it).
        shape: spatial shape (D, H, W), each at least 8.
        index: unused (every case has vessels); accepted so that every task's generator is called alike.
        config: generator knobs; default :class:`ThinConfig`.

    Returns:
        image (D, H, W) float32 (MRA-like units), label uint8 {0, 1}, affine ``diag(spacing)`` centred on the origin.

    Raises:
        ConfigError: a side of ``shape`` is smaller than 8.
    """
    cfg = config or ThinConfig()
    shape = check_shape(shape)
    spacing = np.asarray(cfg.spacing, dtype=float)
    voxels = grid_mm(shape, spacing) / spacing  # positions in voxels (isotropic spacing), centre at 0
    vessels = np.zeros(len(voxels), dtype=bool)
    for _ in range(int(rng.integers(cfg.trees[0], cfg.trees[1] + 1))):
        vessels |= _vessel_tree(rng, np.asarray(shape), voxels, cfg)
    image = cfg.tissue_intensity + cfg.texture_amplitude * _smooth_noise(rng, shape, sigma=2.0).reshape(-1)
    clear = ndimage.distance_transform_edt(~vessels.reshape(shape)).reshape(-1) > 3.0
    for _ in range(int(rng.integers(cfg.blobs[0], cfg.blobs[1] + 1))):
        centre = rng.uniform(-0.4, 0.4, size=3) * np.asarray(shape)
        blob = np.linalg.norm(voxels - centre, axis=1) < rng.uniform(*cfg.blob_radius)
        image = np.where(blob & clear, rng.uniform(*cfg.blob_intensity), image)
    image = np.where(vessels, 1.0, image).reshape(shape)
    flat = voxels / (np.asarray(shape) / 2)
    image = mr_acquisition(rng, image, spacing, flat, cfg)
    label = vessels.reshape(shape).astype(np.uint8)
    return PhantomCase(image.astype(np.float32), label, centred_affine(shape, spacing))


def _vessel_tree(rng: np.random.Generator, shape: np.ndarray, voxels: np.ndarray, cfg: ThinConfig) -> np.ndarray:
    """A tree of curved tubes entering through a face of the volume and bifurcating: flat bool over ``voxels``."""
    axis, sign = int(rng.integers(3)), float(rng.choice([-1.0, 1.0]))
    start = rng.uniform(-0.3, 0.3, size=3) * shape
    start[axis] = sign * (shape[axis] / 2 - 1.0)
    direction = _unit(-sign * np.eye(3)[axis] + rng.normal(0, 0.3, size=3))
    length = min(rng.uniform(*cfg.root_length), 0.5 * shape.min())
    todo = [(start, direction, rng.uniform(*cfg.root_radius), length, 0)]
    tree = np.zeros(len(voxels), dtype=bool)
    while todo:
        p0, direction, radius, length, generation = todo.pop()
        p2 = p0 + direction * length
        p1 = (p0 + p2) / 2 + _unit(np.cross(direction, rng.standard_normal(3))) * rng.uniform(0.0, 0.2) * length
        dist, _ = _curve_distance(voxels, p0, p1, p2, reach=2 * radius + 1)
        tree |= dist < radius
        if generation + 1 >= cfg.generations:
            continue
        end = _unit(p2 - p1)
        normal = _unit(np.cross(end, rng.standard_normal(3)))
        for side in (1.0, -1.0):  # a bifurcation: two children on opposite sides of the parent's end direction
            angle = np.deg2rad(rng.uniform(*cfg.branch_angle_deg))
            child = _unit(np.cos(angle) * end + side * np.sin(angle) * normal)
            child_radius = max(cfg.min_radius, radius * cfg.radius_ratio)
            todo.append((p2, child, child_radius, length * rng.uniform(*cfg.length_ratio), generation + 1))
    return tree


def _heart_case(
    rng: np.random.Generator, *, shape: tuple[int, int, int], index: int = 0, config: PhantomConfig | None = None
) -> PhantomCase:
    return generate_case(rng, shape=shape, config=config or PhantomConfig())


TASKS: dict[str, SynthTask] = {
    task.name: task
    for task in (
        SynthTask(
            name="heart",
            dataset_name="SyntheticHeart",
            summary="segbench synthetic left-atrium MRI phantom",
            modality="MRI",
            labels={"0": "background", "1": "left atrium"},
            version=GENERATOR_VERSION,
            default_shape=DEFAULT_SHAPE,
            config_type=PhantomConfig,
            generate=_heart_case,
            case_ids=case_ids,
        ),
        SynthTask(
            name="ct_lesion",
            dataset_name="SyntheticCTLesion",
            summary="segbench synthetic anisotropic CT crop: organ with small lesions, some cases without",
            modality="CT",
            labels={"0": "background", "1": "organ", "2": "lesion"},
            version=1,
            default_shape=(56, 56, 24),
            config_type=CTLesionConfig,
            generate=ct_lesion_case,
            case_ids=_numbered_ids("ct"),
        ),
        SynthTask(
            name="thin",
            dataset_name="SyntheticThin",
            summary="segbench synthetic MRA-like vessel trees 1-3 voxels across among bright blobs",
            modality="MRI",
            labels={"0": "background", "1": "vessel"},
            version=1,
            default_shape=(48, 48, 32),
            config_type=ThinConfig,
            generate=thin_case,
            case_ids=_numbered_ids("vessel"),
        ),
    )
}


def get_task(name: str) -> SynthTask:
    """The embedded task called ``name``.

    Raises:
        ConfigError: no such task (the message lists the tasks).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown synthetic task {name!r}; the embedded tasks are {', '.join(TASKS)}")
    return TASKS[name]


def task_of(data: str | None) -> str | None:
    """The embedded task a run's ``--data`` names: ``"heart"`` for none, NAME for ``synth:NAME``, else ``None``.

    Raises:
        ConfigError: ``synth:NAME`` with an unknown NAME.
    """
    if data is None:
        return "heart"
    if not str(data).startswith(SYNTH_PREFIX):
        return None
    name = str(data)[len(SYNTH_PREFIX) :]
    if name not in TASKS:
        raise ConfigError(
            f"--data {data} names no embedded task; use one of {', '.join(SYNTH_PREFIX + n for n in TASKS)}"
        )
    return name
