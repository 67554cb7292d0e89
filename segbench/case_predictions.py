"""Per-case resume of a job's prediction phase: predictions finished before an interruption are kept.

A job writes each validation case's prediction atomically (:func:`segbench.data.nifti.write_nifti`) as soon as it is
made, so a file in the job's ``predictions/`` folder is always complete. Whether it is still *valid* depends on the
weights that made it: ``predictions.json`` in the job folder records a digest of the model's weights when prediction
starts. A resumed job whose trained weights have the same digest keeps every prediction file already there and
predicts only the missing cases; different weights (a job trained again from scratch) remove the old files first.
The class probabilities a run with ``--save-probabilities`` keeps (``<case_id>.npz``, :mod:`segbench.probabilities`)
are treated like the predictions: removed with them, and a case counts as kept only when both files are there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from segbench import rundir
from segbench.atomic import atomic_write_json

__all__ = ["PredictionLedger", "weights_digest"]

LEDGER_FILE = "predictions.json"


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of the model's parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        value = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


class PredictionLedger:
    """Which of a job's prediction files were made by the current weights (see the module docstring)."""

    def __init__(self, run_dir: str | Path, job, digest: str, *, probabilities: bool = False) -> None:
        self._run_dir, self._job, self.digest, self.probabilities = run_dir, job, digest, probabilities
        folder = rundir.predictions_dir(run_dir, job)
        path = rundir.job_dir(run_dir, job) / LEDGER_FILE
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("weights")
        except (OSError, ValueError, AttributeError):
            recorded = None
        folder.mkdir(parents=True, exist_ok=True)
        if recorded != digest:
            # Made by other weights (or by an attempt that left no record): they must not be scored as this model's.
            for suffix in (rundir.PREDICTION_SUFFIX, rundir.PROBABILITIES_SUFFIX):
                for stale in folder.glob(f"*{suffix}") if folder.is_dir() else ():
                    stale.unlink(missing_ok=True)
            atomic_write_json(path, {"weights": digest})

    def path(self, case_id: str) -> Path:
        return rundir.prediction_path(self._run_dir, self._job, case_id)

    def probabilities_path(self, case_id: str) -> Path:
        return rundir.probabilities_path(self._run_dir, self._job, case_id)

    def kept(self, case_id: str) -> bool:
        """True when ``case_id``'s prediction was made by these weights before (it is complete: written atomically),
        and, when probabilities are kept, its probabilities too."""
        if self.probabilities and not self.probabilities_path(case_id).is_file():
            return False
        return self.path(case_id).is_file()
