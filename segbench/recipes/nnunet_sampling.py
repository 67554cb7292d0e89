"""The nnunet recipe's training batches: nnU-Net's patch sampling and augmentation, reproducible per (seed, index).

The specification is nnU-Net 2.8.1's ``nnUNetDataLoader`` (``generate_train_batch``, ``get_bbox``,
``_oversample_last_XX_percent``) and the class locations its preprocessor stores:

* a case is drawn uniformly (with replacement) for every sample;
* foreground is forced by *position* in the batch: the samples at positions ``j >= round(B * (1 - 0.33))`` (with
  batch size 2: the second one; with batch size 1: none);
* a forced sample picks a foreground class present in the case uniformly, then one of that class's stored voxels
  (at most 10 000 per class, or 1 %, a fixed random subset per case), and puts it at the centre of the patch, the
  patch start clipped only from below; a case without foreground falls back to a random patch;
* a random patch starts anywhere from ``-need_to_pad // 2`` to ``shape + need_to_pad // 2 + need_to_pad % 2 - patch``,
  ``need_to_pad`` being the initial patch's excess over the final patch (or more, for volumes smaller than it);
* the patch is cut at the *initial* (larger) patch size, with 0 outside the volume in the image and -1 in the
  segmentation, and the training transforms (:mod:`segbench.recipes.nnunet_augment`) bring it to the final size.

Common random numbers: sample ``i`` is a pure function of ``(seed, i)``, whatever the model, the number of loader
workers or the batches before it. Its generator is ``np.random.default_rng([seed, i])``: it draws the case, the
patch and a seed for the augmentation, with which numpy's and torch's *global* generators (which batchgeneratorsv2
draws from) are seeded for the duration of the sample, one torch thread as in a loader worker; the caller's global
generator states and thread count are restored afterwards. Resuming at iteration ``k`` is starting the sampler at
``k * B`` (:func:`segbench.data.sampling.make_loader`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segbench.data.preprocess import PreparedCase, load_prepared
from segbench.data.sampling import class_table, crop_with_padding, make_loader
from segbench.errors import ConfigError
from segbench.recipes import nnunet_augment

#: nnU-Net's ``oversample_foreground_percent``.
OVERSAMPLE_FOREGROUND = 0.33
#: Stored foreground voxels per class and case: at least this many (or all), and at least this share.
LOCATIONS_PER_CLASS = 10_000
LOCATIONS_MIN_SHARE = 0.01
#: Segmentation value outside the volume (and outside the nonzero mask, in nnU-Net's own preprocessing).
OUTSIDE = -1

__all__ = [
    "NnunetPatchDataset",
    "class_locations",
    "forced_foreground",
    "nnunet_batches",
    "nnunet_dataset",
    "patch_bounds",
    "patch_start",
    "seeded_global_rngs",
]


def forced_foreground(position: int, batch_size: int, oversample: float = OVERSAMPLE_FOREGROUND) -> bool:
    """Whether the sample at ``position`` of a batch is forced to contain foreground (nnU-Net's
    ``_oversample_last_XX_percent``: the last ``B - round(B * (1 - oversample))`` positions, Python's rounding)."""
    return not position < round(batch_size * (1 - oversample))


def class_locations(classes: np.ndarray, num_classes: int, *, seed: int | Sequence[int]) -> dict[int, np.ndarray]:
    """Stored voxels per foreground class: a fixed random subset (sorted) of each class's voxels.

    Args:
        classes: ``(D, H, W)`` class indices (0 background).
        num_classes: foreground classes ``1..num_classes`` get an entry (empty ``(0, 3)`` when absent).
        seed: the subset's seed (the same in every worker and every resumed run).

    Returns:
        ``{class: (N, 3) int64 coordinates}`` with ``N = max(min(10 000, n), ceil(n / 100))`` of its ``n`` voxels.
    """
    rng = np.random.default_rng(seed)
    coords = np.argwhere(classes > 0)
    values = classes[tuple(coords.T)]
    out = {}
    for c in range(1, num_classes + 1):
        mine = coords[values == c]
        keep = max(min(LOCATIONS_PER_CLASS, len(mine)), int(np.ceil(len(mine) * LOCATIONS_MIN_SHARE)))
        if keep < len(mine):
            mine = mine[np.sort(rng.choice(len(mine), keep, replace=False))]
        out[c] = mine
    return out


def patch_start(
    rng: np.random.Generator,
    shape: Sequence[int],
    *,
    patch: Sequence[int],
    final_patch: Sequence[int],
    locations: dict[int, np.ndarray] | None,
) -> list[int]:
    """Start of the patch in the volume (may be negative or run past the end: padding), as nnU-Net's ``get_bbox``.

    Args:
        rng: the sample's generator.
        shape: the volume's spatial shape.
        patch: the patch cut (the initial patch of the augmentation).
        final_patch: the patch the network sees.
        locations: the case's :func:`class_locations` to force foreground, or ``None`` for a random patch.
    """
    lower, upper = patch_bounds(shape, patch=patch, final_patch=final_patch)
    eligible = [c for c, voxels in (locations or {}).items() if len(voxels)]
    if not eligible:
        return [int(rng.integers(lo, hi + 1)) for lo, hi in zip(lower, upper, strict=True)]
    voxels = locations[eligible[int(rng.integers(len(eligible)))]]  # type: ignore[index]
    voxel = voxels[int(rng.integers(len(voxels)))]
    # The chosen voxel is the patch's centre; nnU-Net clips the start from below only.
    return [max(lo, int(v) - int(p) // 2) for lo, v, p in zip(lower, voxel, patch, strict=True)]


def patch_bounds(
    shape: Sequence[int], *, patch: Sequence[int], final_patch: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Smallest and largest start of a random patch per axis (inclusive), as nnU-Net's ``get_bbox`` bounds them."""
    lower, upper = [], []
    for size, p, final in zip(shape, patch, final_patch, strict=True):
        pad = max(int(p) - int(final), int(p) - int(size))
        lower.append(-pad // 2)
        upper.append(int(size) + pad // 2 + pad % 2 - int(p))
    return lower, upper


class NnunetPatchDataset(Dataset):
    """``length`` augmented training samples as nnU-Net makes them; item ``i`` depends only on ``(seed, i)``.

    Args:
        cases: prepared (labelled) cases.
        patch_size: the plan's patch (D, H, W).
        batch_size: the batch size (foreground is forced by position ``i % batch_size``).
        length: number of samples (iterations × batch size).
        seed: the job's sampling seed.
        foreground_labels: label values of the foreground classes 1..K (:func:`segbench.data.sampling.class_table`).
        oversample: nnU-Net's foreground oversampling share.
        transforms: the per-sample pipeline (:func:`segbench.recipes.nnunet_augment.training_transforms`, or
            ``validation_transforms`` without augmentation).
        initial_patch_size: the patch cut before ``transforms`` (the augmentation's initial patch, else the patch).

    Items: ``image`` float32 ``(C, *patch_size)``; ``label`` uint8 class indices ``(*patch_size)``, or a list of them
    per deep-supervision scale (full resolution first) when ``transforms`` downsamples the targets; ``case_id``.

    Raises:
        ConfigError: no cases, an unlabelled case, a bad patch or batch size, or ``oversample`` outside [0, 1].
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        *,
        patch_size: Sequence[int],
        batch_size: int,
        length: int,
        seed: int,
        foreground_labels: Sequence[int],
        oversample: float = OVERSAMPLE_FOREGROUND,
        transforms: Any,
        initial_patch_size: Sequence[int],
    ) -> None:
        _check(cases, patch_size, batch_size, oversample)
        self.cases = tuple(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.initial_patch_size = tuple(int(p) for p in initial_patch_size)
        self.batch_size, self.length, self.seed = int(batch_size), int(length), int(seed)
        self.num_classes = len(foreground_labels)
        self._classes = class_table(foreground_labels)
        self.oversample = float(oversample)
        self.transforms = transforms
        # Opened lazily in each worker process (memory maps and locations are not pickled).
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._locations: dict[int, dict[int, np.ndarray]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"], state["_locations"] = {}, {}
        return state

    def __len__(self) -> int:
        return self.length

    def _open(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._arrays:
            self._arrays[k] = load_prepared(self.cases[k], mmap=True)  # type: ignore[assignment]
        return self._arrays[k]

    def _class_locations(self, k: int) -> dict[int, np.ndarray]:
        if k not in self._locations:
            classes = self._classes[np.asarray(self._open(k)[1])]
            self._locations[k] = class_locations(classes, self.num_classes, seed=(self.seed, k))
        return self._locations[k]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"sample index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.cases)))
        force = forced_foreground(index % self.batch_size, self.batch_size, self.oversample)
        image, label = self._open(k)
        start = patch_start(rng, image.shape[1:], patch=self.initial_patch_size, final_patch=self.patch_size,
                            locations=self._class_locations(k) if force else None)  # fmt: skip
        image_patch = crop_with_padding(image, start, self.initial_patch_size, fill=0.0, dtype=np.float32)
        raw = crop_with_padding(label, start, self.initial_patch_size, fill=OUTSIDE, dtype=np.int16)
        seg = np.where(raw < 0, raw, self._classes[np.maximum(raw, 0)]).astype(np.int16)
        with seeded_global_rngs(int(rng.integers(2**63))):
            out = self.transforms(image=torch.from_numpy(image_patch), segmentation=torch.from_numpy(seg[None]))
        target = out["segmentation"]
        labels = [t[0].to(torch.uint8) for t in target] if isinstance(target, list) else target[0].to(torch.uint8)
        return {"image": out["image"].float().contiguous(), "label": labels, "case_id": self.cases[k].case_id}


def _check(cases: Sequence[PreparedCase], patch_size: Sequence[int], batch_size: int, oversample: float) -> None:
    if not cases:
        raise ConfigError("no training cases to sample patches from; check the dataset and the fold's split")
    unlabelled = [c.case_id for c in cases if c.label_path is None]
    if unlabelled:
        raise ConfigError(f"cases {unlabelled} have no label and cannot be used for training")
    if len(patch_size) != 3 or min(patch_size) < 1:
        raise ConfigError(f"the patch must be three positive sizes, got {tuple(patch_size)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if not 0.0 <= oversample <= 1.0:
        raise ConfigError(f"the foreground oversampling share must be in [0, 1], got {oversample}")


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed numpy's and torch's global CPU generators from ``seed`` and use one torch thread; restore on exit.

    batchgeneratorsv2 draws from the global generators; seeding them per sample makes its draws a function of the
    sample. One thread, as in a DataLoader worker, so that loading in the main process computes the same floats.
    The CUDA generators are untouched.
    """
    np_state, torch_state, threads = np.random.get_state(), torch.get_rng_state(), torch.get_num_threads()
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))
    torch.default_generator.manual_seed(seed)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        torch.set_num_threads(threads)


def nnunet_dataset(
    cases: Sequence[PreparedCase],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    seed: int,
    iterations: int,
    foreground_labels: Sequence[int],
    oversample: float = OVERSAMPLE_FOREGROUND,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    use_mask_for_norm: Sequence[bool] | None = None,
    augment: bool = True,
) -> NnunetPatchDataset:
    """The :class:`NnunetPatchDataset` of a run of ``iterations`` batches, with nnU-Net's pipeline for ``patch_size``
    (arguments as :func:`nnunet_batches`)."""
    settings = nnunet_augment.augmentation_settings(patch_size)
    if augment:
        transforms = nnunet_augment.training_transforms(
            settings, deep_supervision_scales=deep_supervision_scales, use_mask_for_norm=use_mask_for_norm
        )
        initial = settings.initial_patch_size
    else:
        transforms, initial = nnunet_augment.validation_transforms(deep_supervision_scales), settings.patch_size
    return NnunetPatchDataset(
        cases, patch_size=settings.patch_size, batch_size=batch_size, length=int(iterations) * int(batch_size),
        seed=seed, foreground_labels=foreground_labels, oversample=oversample, transforms=transforms,
        initial_patch_size=initial,
    )  # fmt: skip


def nnunet_batches(
    cases: Sequence[PreparedCase],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    seed: int,
    iterations: int,
    start_iteration: int = 0,
    foreground_labels: Sequence[int],
    oversample: float = OVERSAMPLE_FOREGROUND,
    deep_supervision_scales: Sequence[Sequence[float]] | None = None,
    use_mask_for_norm: Sequence[bool] | None = None,
    augment: bool = True,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, Any]]:
    """The nnunet recipe's training batches from iteration ``start_iteration`` to ``iterations`` (exclusive).

    Batch ``j`` is a function of ``(seed, j)`` only (common random numbers; see the module docstring).

    Args:
        cases: the fold's prepared training cases.
        patch_size: the plan's patch (D, H, W).
        batch_size: the plan's batch size.
        seed: the job's seed (:func:`segbench.job.job_seed`: the same for every model of a (fold, repeat)).
        iterations: the run's total iterations (epochs × 250).
        start_iteration: batches already consumed (a resumed run).
        foreground_labels: label values of classes 1..K.
        oversample: foreground oversampling share (nnU-Net: 0.33).
        deep_supervision_scales: :func:`segbench.recipes.nnunet_augment.deep_supervision_scales` of the plan's
            strides for a model with deep supervision, else ``None``.
        use_mask_for_norm: the plan's per-channel flags (masks mask-normalised channels after augmenting).
        augment: nnU-Net's training augmentation; ``False`` cuts the patch directly (its validation pipeline).
        num_workers: loader processes (0 = in the main process).
        device: the training device (pinned memory on CUDA).

    Yields:
        ``image`` ``(B, C, *patch)`` float32; ``label`` ``(B, *patch)`` uint8 class indices, with deep supervision a
        list of ``(B, *patch_i)`` uint8, full resolution first; ``case_id`` a list of B ids. Close the generator to
        shut the loader's workers down.

    Raises:
        ConfigError: bad sizes (:class:`NnunetPatchDataset`, :func:`segbench.data.sampling.make_loader`) or
            batchgeneratorsv2 missing.
    """
    dataset = nnunet_dataset(
        cases, patch_size=patch_size, batch_size=batch_size, seed=seed, iterations=iterations,
        foreground_labels=foreground_labels, oversample=oversample, deep_supervision_scales=deep_supervision_scales,
        use_mask_for_norm=use_mask_for_norm, augment=augment,
    )  # fmt: skip
    loader = make_loader(dataset, batch_size=batch_size, start_iteration=start_iteration, num_workers=num_workers,
                         pin_memory=torch.device(device).type == "cuda")  # fmt: skip
    return (batch for batch in loader)
