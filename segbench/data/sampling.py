"""Random training patches with foreground oversampling and augmentation, reproducible per index.

Sample ``i`` is a pure function of ``(seed, i)``: its generator is ``np.random.default_rng([seed, i])``
and nothing else (no worker seeds, no shuffling state). A training run that stops after iteration
``k`` therefore resumes with exactly the batches it would have seen, by starting a sequential sampler at
index ``k * batch_size`` (:func:`make_loader`), whatever the number of workers.

Per sample, in this order of random draws: the case, whether foreground is forced (probability
``fg_fraction``), the patch location (centred on a random foreground voxel with jitter, else uniform),
then the augmentation (a flip per axis, per-channel intensity scale and shift, gamma).

Labels leave the loader workers as uint8 *class indices* (0 background, ``i`` for the ``i``-th foreground label): the
mapping from label values is done here, in the worker, so the training process gets a tensor that the DataLoader has
already pinned (with ``pin_memory``) and copies an eighth of the bytes of int64 to the GPU, asynchronously.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segbench.data.preprocess import PreparedCase, load_prepared
from segbench.errors import ConfigError

# Cap on stored foreground coordinates per case: a Task02 atrium has ~10⁵ voxels; a random subset keeps
# the lookup small per worker and is still a uniform choice over the foreground.
_MAX_FOREGROUND_VOXELS = 20_000


def class_table(foreground_labels: Sequence[int]) -> np.ndarray:
    """Lookup table from uint8 label values to class indices: 0 background, ``i`` for ``foreground_labels[i - 1]``.

    Returns:
        ``(256,)`` uint8; values not in ``foreground_labels`` map to 0 (background).

    Raises:
        ConfigError: a foreground label outside 1..255 (prepared labels are uint8, 0 is background).
    """
    table = np.zeros(256, dtype=np.uint8)
    for index, value in enumerate(foreground_labels, start=1):
        if not 1 <= int(value) <= 255:
            raise ConfigError(f"foreground label values must be in 1..255 (got {value}); 0 is the background")
        table[int(value)] = index
    return table


def crop_with_padding(
    array: np.ndarray, start: Sequence[int], size: Sequence[int], *, fill: float = 0, dtype: Any = None
) -> np.ndarray:
    """Copy the box ``[start, start + size)`` of the last three axes of ``array``, padding outside with ``fill``.

    ``start`` may be negative or the box may extend past the end (volumes smaller than the patch).
    Returns a new contiguous array of shape ``array.shape[:-3] + size``, of ``dtype`` (default: ``array``'s; a wider
    one lets ``fill`` be a value ``array`` cannot hold, e.g. -1 around a uint8 label).
    """
    out = np.full(array.shape[:-3] + tuple(size), fill, dtype=array.dtype if dtype is None else dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-3:], strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    out[(..., *dst)] = array[(..., *src)]
    return out


class PatchDataset(Dataset):
    """``length`` random patches from prepared cases; item ``i`` depends only on ``(seed, i)``.

    Args:
        cases: prepared (labelled) cases to sample from.
        patch_size: patch spatial size (D, H, W) in voxels.
        length: number of samples (iterations × batch size of the whole training run).
        seed: sampling seed (e.g. derived from model and fold).
        foreground_labels: label values counted as foreground for oversampling.
        fg_fraction: probability that a sample is forced to contain foreground.
        augment: apply random flips and intensity augmentation.

    Items are dicts: ``image`` float32 tensor ``(C, *patch_size)``, ``label`` uint8 tensor ``(*patch_size)`` of
    class indices (:func:`class_table`: 0 background, ``i`` for ``foreground_labels[i - 1]``, other values
    background), ``case_id`` str. Volumes smaller than the patch are padded with 0 (the z-scored mean) in the image
    and background in the label.

    Raises:
        ConfigError: no cases, an unlabelled case, a non-positive patch size or length, ``fg_fraction`` outside
            [0, 1], or a foreground label outside 1..255.
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        *,
        patch_size: tuple[int, int, int],
        length: int,
        seed: int,
        foreground_labels: Sequence[int] = (1,),
        fg_fraction: float = 1 / 3,
        augment: bool = True,
    ) -> None:
        if not cases:
            raise ConfigError("no training cases to sample patches from; check the dataset and the fold's split")
        unlabelled = [c.case_id for c in cases if c.label_path is None]
        if unlabelled:
            raise ConfigError(f"cases {unlabelled} have no label and cannot be used for training")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise ConfigError(f"--patch must be three positive sizes, got {tuple(patch_size)}")
        if length < 0:
            raise ConfigError(f"the number of samples must be non-negative, got {length}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ConfigError(f"the foreground fraction must be in [0, 1], got {fg_fraction}")
        self.cases = tuple(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.length = int(length)
        self.seed = int(seed)
        self.foreground_labels = tuple(int(v) for v in foreground_labels)
        self._classes = class_table(self.foreground_labels)
        self.fg_fraction = float(fg_fraction)
        self.augment = augment
        # Opened lazily in each worker process (memory maps are not shared through pickling).
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._foreground: dict[int, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"], state["_foreground"] = {}, {}
        return state

    def __len__(self) -> int:
        return self.length

    def _open(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in self._arrays:
            image, label = load_prepared(self.cases[k], mmap=True)
            self._arrays[k] = (image, label)  # type: ignore[assignment]
        return self._arrays[k]

    def _foreground_voxels(self, k: int) -> np.ndarray:
        """(N, 3) foreground coordinates of case ``k`` (a fixed random subset when large), computed once."""
        if k not in self._foreground:
            _, label = self._open(k)
            coords = np.argwhere(np.isin(label, self.foreground_labels)).astype(np.int32)
            if len(coords) > _MAX_FOREGROUND_VOXELS:
                # Seeded by the case index only, so every worker and every resumed run picks the same subset.
                subset_rng = np.random.default_rng([self.seed, k, 7])
                pick = subset_rng.choice(len(coords), _MAX_FOREGROUND_VOXELS, replace=False)
                coords = coords[np.sort(pick)]
            self._foreground[k] = coords
        return self._foreground[k]

    def _location(self, rng: np.random.Generator, shape: tuple[int, ...], coords: np.ndarray | None) -> list[int]:
        patch = np.asarray(self.patch_size)
        # Start positions range over [size - patch, 0] when the volume is smaller (padding), else [0, size - patch].
        low = np.minimum(0, np.asarray(shape) - patch)
        high = np.maximum(0, np.asarray(shape) - patch)
        if coords is not None and len(coords):
            centre = coords[rng.integers(len(coords))]
            jitter = rng.integers(-(patch // 4), patch // 4 + 1)
            # Clipping into the valid range keeps the chosen voxel inside the patch (|jitter| ≤ patch/4).
            start = np.clip(centre - patch // 2 + jitter, low, high)
        else:
            start = rng.integers(low, high + 1)
        return [int(s) for s in start]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"sample index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, int(index)])
        k = int(rng.integers(len(self.cases)))
        force_foreground = rng.random() < self.fg_fraction
        image, label = self._open(k)
        coords = self._foreground_voxels(k) if force_foreground else None
        start = self._location(rng, image.shape[1:], coords)
        image_patch = crop_with_padding(image, start, self.patch_size, fill=0.0)
        label_patch = crop_with_padding(label, start, self.patch_size, fill=0)
        if self.augment:
            image_patch, label_patch = _augment(rng, image_patch, label_patch)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image_patch, dtype=np.float32)),
            "label": torch.from_numpy(self._classes[label_patch]),  # a new contiguous uint8 array of class indices
            "case_id": self.cases[k].case_id,
        }


def _augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flips on each spatial axis (p = 0.5), per-channel scale ×[0.9, 1.1] and shift ±0.1, gamma (p = 0.3).

    Gamma acts on the patch rescaled to [0, 1] and is mapped back to its range, because z-scored values
    are negative. Works on ``image`` (C, D, H, W) and ``label`` (D, H, W).
    """
    for axis in range(3):
        if rng.random() < 0.5:
            image = np.flip(image, axis=axis + 1)
            label = np.flip(label, axis=axis)
    channels = image.shape[0]
    scale = rng.uniform(0.9, 1.1, size=(channels, 1, 1, 1))
    shift = rng.uniform(-0.1, 0.1, size=(channels, 1, 1, 1))
    image = image.astype(np.float32) * scale.astype(np.float32) + shift.astype(np.float32)
    if rng.random() < 0.3:
        gamma = rng.uniform(0.7, 1.5)
        for c in range(channels):
            lo, hi = float(image[c].min()), float(image[c].max())
            if hi > lo:
                image[c] = ((image[c] - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    return image, label


class _OffsetSequentialSampler(Sampler[int]):
    """Indices ``start, start + 1, …, stop - 1`` in order."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def resolve_num_workers(num_workers: int | None, device: torch.device | str, *, pipeline: str = "tutorial") -> int:
    """``--num-workers`` with ``None`` (auto) resolved for the job's device and the recipe's data pipeline.

    On the CPU, 0 whatever the pipeline: the training step already keeps every core busy (torch's threads), so a
    worker process only steals time from it, and each time it runs it stalls the step's threads at their next barrier;
    making a batch in the main process between steps costs just its own time (about 1 ms a sample for the tutorial
    recipe). Measured on a 2-core CPU, fcn: a worker gave 0.94 of the bare step's rate, loading in the main process
    0.985 (``benchmarks/test_bench_training.py``). On CUDA the GPU computes while the CPU makes the next batch: 1
    worker for the tutorial recipe; for nnU-Net's augmentation (``pipeline="nnunet"``, tens of milliseconds a sample
    or more) one per core but one for the job's own process, at most 12 (nnU-Net's default for its augmentation).
    """
    if num_workers is not None:
        return int(num_workers)
    if torch.device(device).type != "cuda":
        return 0
    if pipeline == "nnunet":
        from segbench.profiling import allocated_cpus

        return max(1, min(allocated_cpus() - 1, 12))
    return 1


def make_loader(
    dataset: Dataset, *, batch_size: int, start_iteration: int = 0, num_workers: int = 1, pin_memory: bool = False
) -> DataLoader:
    """A DataLoader over ``dataset`` in index order, starting at batch ``start_iteration``.

    Batch ``j`` of the returned loader is batch ``start_iteration + j`` of a loader started at 0, so a
    resumed training run sees the same data as an uninterrupted one.

    Args:
        dataset: the patch dataset, item ``i`` a function of ``(seed, i)`` (its length = total samples of the run):
            a :class:`PatchDataset` or the nnunet recipe's (:mod:`segbench.recipes.nnunet_sampling`).
        batch_size: samples per batch.
        start_iteration: number of batches already consumed.
        num_workers: loader processes (0 = load in the main process); workers are persistent.
        pin_memory: pin batches for faster host-to-GPU copies (only useful with CUDA).

    Raises:
        ConfigError: a non-positive batch size, negative workers, or ``start_iteration`` beyond the end.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"the number of loader workers must be non-negative, got {num_workers}")
    start = start_iteration * batch_size
    if start_iteration < 0 or start > len(dataset):
        raise ConfigError(
            f"cannot resume at iteration {start_iteration}: the run has only {len(dataset) // batch_size} iterations"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_OffsetSequentialSampler(start, len(dataset)),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=_ignore_termination if num_workers > 0 else None,
        # Samples draw from their own (seed, index) generators; a private generator keeps creating the loader from
        # consuming the global torch RNG, so a resumed job's model sees the same random stream as an uninterrupted one.
        generator=torch.Generator().manual_seed(0),
    )


def preempt_signal() -> signal.Signals:
    """The signal submitit turns into checkpoint-and-requeue: ``SUBMITIT_PREEMPT_SIGNAL`` (a name), default USR2."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    try:
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    except KeyError:
        return signal.SIGUSR2


def _ignore_termination(worker_id: int) -> None:  # noqa: ARG001 - the worker_init_fn signature
    # `kill`, Slurm and pkill signal the whole process group, and Slurm's time-limit / pre-emption signal reaches
    # every process of the job. The main process turns them into an orderly stop (checkpoint, then `killed` or a
    # requeue) and shuts its workers down itself. A worker inherits the main process's Python handlers; running
    # them would make it requeue the job or exit on its own, which the main process sees as a "DataLoader worker
    # exited unexpectedly" failure. Workers still exit when their parent dies.
    for signum in (signal.SIGINT, preempt_signal()):
        signal.signal(signum, signal.SIG_IGN)
    # SIGTERM is ignored too, except from the parent itself: at interpreter exit multiprocessing terminates its
    # daemonic children with SIGTERM and then joins them, so a worker that ignored its parent's SIGTERM would hang
    # the exit of any process whose loader was still alive. Only `sigwaitinfo` tells the sender, so SIGTERM is
    # blocked here (threads started later inherit the mask) and one thread waits for it.
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(parent,), name="sigterm-from-parent", daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
