"""Dataset fingerprint: what nnU-Net's planner needs to know about a dataset, extracted as nnU-Net v2 does.

Per training case: its voxel spacing, its shape after cropping to the nonzero region, and the share of voxels the
crop keeps; per channel: intensity statistics of foreground voxels sampled from every case.

**Axis order.** Plans and fingerprints are written in nnU-Net's axis order, so nnU-Net can read them: for NIfTI,
nnU-Net reads images through SimpleITK, whose arrays are segbench's (nibabel's) array axes reversed. segbench arrays
``(D, H, W)`` with spacing ``(sD, sH, sW)`` are ``(W, H, D)`` with ``(sW, sH, sD)`` in a plan;
:mod:`segbench.plans.axes` converts.

**Crop.** The nonzero region is where any channel is nonzero, with holes filled (6-connected); the crop is its
bounding box; foreground is every voxel of the cropped label map above 0.

**Intensity sample.** As nnU-Net: 10**8 foreground voxels over the whole dataset, ``10**8 // n_cases`` per case
drawn with replacement by ``numpy.random.RandomState(1234)`` (one generator per case, channels in order) from the
case's foreground voxels in C order of the plan-ordered array. The statistics (mean, std, min, max, median,
0.5th and 99.5th percentile) are those of the pooled sample; CT normalization uses them.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from segbench.data.dataset import Case, DatasetSpec, load_case
from segbench.errors import DatasetError
from segbench.plans.axes import to_plan_axes

log = logging.getLogger(__name__)

#: Foreground voxels sampled over the whole dataset (nnU-Net's ``num_foreground_voxels_for_intensitystats``).
TOTAL_INTENSITY_SAMPLES = 10e7
#: Seed of each case's sampling generator (nnU-Net's).
SAMPLING_SEED = 1234
_PERCENTILES = (0.5, 50.0, 99.5)


@dataclass(frozen=True)
class IntensityProperties:
    """Foreground intensity statistics of one channel, in the image's own units (e.g. Hounsfield units for CT)."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_99_5: float
    percentile_00_5: float


@dataclass(frozen=True)
class CaseFingerprint:
    """One case's contribution (plan axis order).

    Attributes:
        spacing: voxel size in mm.
        shape_after_crop: voxels per axis after cropping to the nonzero region.
        relative_size_after_crop: voxels after the crop / voxels before.
        samples: per channel, the sampled foreground intensities (float32; empty without foreground).
    """

    spacing: tuple[float, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_crop: float
    samples: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class DatasetFingerprint:
    """nnU-Net's ``dataset_fingerprint.json`` (plan axis order).

    Attributes:
        spacings: per training case, voxel size in mm.
        shapes_after_crop: per training case, voxels per axis after the nonzero crop.
        foreground_intensity_properties_per_channel: per channel, statistics of the pooled foreground sample.
        median_relative_size_after_cropping: median over cases of (voxels after crop / voxels before).
    """

    spacings: tuple[tuple[float, ...], ...]
    shapes_after_crop: tuple[tuple[int, ...], ...]
    foreground_intensity_properties_per_channel: tuple[IntensityProperties, ...]
    median_relative_size_after_cropping: float

    def to_json(self) -> dict:
        """The JSON document nnU-Net writes (channel keys are strings "0", "1", ...)."""
        return {
            "spacings": [list(s) for s in self.spacings],
            "shapes_after_crop": [list(s) for s in self.shapes_after_crop],
            "foreground_intensity_properties_per_channel": {
                str(i): asdict(p) for i, p in enumerate(self.foreground_intensity_properties_per_channel)
            },
            "median_relative_size_after_cropping": self.median_relative_size_after_cropping,
        }

    @classmethod
    def from_json(cls, doc: dict) -> DatasetFingerprint:
        """Read a fingerprint written by :meth:`to_json` or by nnU-Net.

        Raises:
            KeyError, TypeError, ValueError: a key is missing or malformed.
        """
        props = doc["foreground_intensity_properties_per_channel"]
        return cls(
            spacings=tuple(tuple(float(v) for v in s) for s in doc["spacings"]),
            shapes_after_crop=tuple(tuple(int(v) for v in s) for s in doc["shapes_after_crop"]),
            foreground_intensity_properties_per_channel=tuple(
                IntensityProperties(**{k: float(v) for k, v in props[key].items()}) for key in sorted(props, key=int)
            ),
            median_relative_size_after_cropping=float(doc["median_relative_size_after_cropping"]),
        )


def extract_fingerprint(spec: DatasetSpec, *, progress: bool = False) -> DatasetFingerprint:
    """Fingerprint the labelled cases of ``spec`` (every image is read once).

    Args:
        spec: a dataset from :func:`segbench.data.dataset.load_dataset`.
        progress: show a progress bar (stderr).

    Raises:
        DatasetError: the dataset has no labelled case, or a file cannot be read (the message names it).
    """
    from tqdm.auto import tqdm

    if not spec.training:
        raise DatasetError(f"{spec.dataset_json} lists no labelled training case; planning needs labelled cases")
    per_case = int(TOTAL_INTENSITY_SAMPLES // len(spec.training))
    # disable=None: a bar only on a terminal.
    bar = tqdm(spec.training, desc="fingerprinting", unit="case", disable=None if progress else True, leave=False)
    cases = [fingerprint_case(case, num_samples=per_case) for case in bar]
    n_channels = len(spec.channels)
    # nnU-Net pools each channel's samples with np.concatenate; an empty case list entry is a float64 [] as there.
    pooled = [np.concatenate([c.samples[i] for c in cases]) for i in range(n_channels)]
    return DatasetFingerprint(
        spacings=tuple(c.spacing for c in cases),
        shapes_after_crop=tuple(c.shape_after_crop for c in cases),
        foreground_intensity_properties_per_channel=tuple(intensity_properties(p) for p in pooled),
        median_relative_size_after_cropping=float(np.median([c.relative_size_after_crop for c in cases])),
    )


def fingerprint_case(case: Case, *, num_samples: int) -> CaseFingerprint:
    """Read ``case`` and take its fingerprint (``num_samples`` foreground intensities per channel).

    Raises:
        DatasetError: unreadable files or a case without a label.
    """
    volume, label = load_case(case)
    if label is None:
        raise DatasetError(f"case {case.case_id} has no label; fingerprints are taken from labelled cases")
    # Into plan axis order: spatial axes reversed (channels stay first).
    image = np.transpose(volume.array, (0, 3, 2, 1))
    seg = np.transpose(label.array, (2, 1, 0))
    box, _ = nonzero_bounding_box(image)
    cropped, foreground = image[(slice(None), *box)], seg[box] > 0
    rng = np.random.RandomState(SAMPLING_SEED)
    samples = []
    for channel in cropped:
        pixels = channel[foreground]
        samples.append(rng.choice(pixels, num_samples, replace=True) if pixels.size else np.array([]))
    return CaseFingerprint(
        spacing=to_plan_axes(volume.spacing),
        shape_after_crop=tuple(int(s) for s in cropped.shape[1:]),
        relative_size_after_crop=float(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:])),
        samples=tuple(samples),
    )


def nonzero_bounding_box(image: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """The bounding box of the nonzero region of ``image`` ``(C, *spatial)`` and the region's mask.

    The region is where any channel is nonzero, holes filled (6-connected). An image without any nonzero voxel
    keeps its full extent.

    Returns:
        ``(slices, mask)``: one slice per spatial axis, and the filled mask ``(*spatial)`` bool.
    """
    from segbench.data.plan_preprocess import bounding_box, nonzero_mask  # the crop preprocessing applies

    mask = nonzero_mask(image)
    return tuple(slice(start, stop) for start, stop in bounding_box(mask)), mask


def intensity_properties(sample: np.ndarray) -> IntensityProperties:
    """Statistics of a pooled foreground sample, computed in the sample's dtype as nnU-Net does.

    An empty sample gives NaN everywhere.
    """
    if sample.size == 0:
        nan = float("nan")
        return IntensityProperties(nan, nan, nan, nan, nan, nan, nan)
    low, median, high = np.percentile(sample, _PERCENTILES)
    return IntensityProperties(
        mean=float(np.mean(sample)),
        median=float(median),
        std=float(np.std(sample)),
        min=float(np.min(sample)),
        max=float(np.max(sample)),
        percentile_99_5=float(high),
        percentile_00_5=float(low),
    )
