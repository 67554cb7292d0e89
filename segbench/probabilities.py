"""Out-of-fold class probabilities: what a job keeps with ``--save-probabilities`` and ``segbench ensemble`` averages.

File format (``jobs/<model>/fold_<k>/predictions/<case_id>.npz``, beside the case's prediction): one array
``probabilities``, ``(K, D, H, W)`` float16 on the case's original voxel grid (the reference's), K the network's
output channels: softmax over background + one channel per foreground label, or, for a single-label network trained
with a sigmoid (one output channel), that channel's sigmoid. float16 keeps a probability to about 3 decimal digits
(relative error below 0.05 %) at half the size of float32; averages are taken in float32.

A file is written atomically, like the predictions, and counts only beside the prediction of the same weights
(:class:`segbench.case_predictions.PredictionLedger` removes both when the weights change).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from segbench import rundir
from segbench.atomic import atomic_write_bytes

__all__ = ["class_probabilities", "foreground_classes", "missing_probabilities", "read_probabilities",
           "write_probabilities"]  # fmt: skip

ARRAY_KEY = "probabilities"


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities of logits ``(K, ...)``: a sigmoid for one channel, else a softmax over the channels."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, dim=0)


def write_probabilities(path: str | Path, probabilities: np.ndarray) -> Path:
    """Atomically write ``probabilities`` ``(K, D, H, W)`` as a compressed ``.npz`` in float16 (module docstring)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{ARRAY_KEY: np.asarray(probabilities, dtype=np.float16)})
    return atomic_write_bytes(path, buffer.getvalue())


def read_probabilities(path: str | Path) -> np.ndarray:
    """The ``(K, D, H, W)`` probabilities of a ``.npz`` file as float32, background first: a one-channel (sigmoid)
    file gives ``(2, D, H, W)`` = (1 - p, p), so that files of either kind average and take an argmax alike.

    Raises:
        ValueError: the file is unreadable or holds no ``probabilities`` array of 4 dimensions (names the file).
    """
    try:
        with np.load(path) as data:
            array = np.asarray(data[ARRAY_KEY], dtype=np.float32)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a probabilities file ({exc.__class__.__name__}: {exc})") from None
    if array.ndim != 4:
        raise ValueError(f"{path} holds probabilities of shape {array.shape}; expected (K, D, H, W)")
    return np.concatenate([1.0 - array, array]) if array.shape[0] == 1 else array


def foreground_classes(probabilities: np.ndarray, foreground: Iterable[int]) -> np.ndarray:
    """Label values ``(D, H, W)`` uint8 of probabilities ``(1 + labels, D, H, W)``: the argmax, channel c → the
    c-th value of ``(0, *foreground)`` (ties go to the lower channel, as ``torch.argmax`` does with logits)."""
    values = np.asarray((0, *foreground), dtype=np.uint8)
    if probabilities.shape[0] != len(values):
        raise ValueError(f"probabilities have {probabilities.shape[0]} channels; the labels need {len(values)}")
    return values[np.argmax(probabilities, axis=0)]


def missing_probabilities(run_dir: str | Path, job: rundir.JobRef) -> list[str]:
    """Case ids of the job's predictions (``predictions/<case_id>.nii.gz``) without a ``<case_id>.npz`` beside them."""
    folder = rundir.predictions_dir(run_dir, job)
    predicted = sorted(folder.glob(f"*{rundir.PREDICTION_SUFFIX}")) if folder.is_dir() else []
    cases = [path.name[: -len(rundir.PREDICTION_SUFFIX)] for path in predicted]
    return [case for case in cases if not rundir.probabilities_path(run_dir, job, case).is_file()]
