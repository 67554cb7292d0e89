"""Rotating, atomic, safe-to-load training checkpoints.

Two files per job folder (names in :mod:`segbench.rundir`): ``checkpoint_latest.pt`` and
``checkpoint_previous.pt``. Saving renames latest to previous, then writes the new latest atomically (temp file,
fsync, rename), so at every instant at least one complete checkpoint exists — a kill in the middle of a write loses
at most the newest one. Loading tries latest, falls back
to previous with a warning, and never silently restarts from scratch when checkpoints exist but none loads.

Every load uses ``torch.load(weights_only=True)``: a checkpoint from elsewhere that carries pickled code is refused
(:class:`UnsafeCheckpointError`) instead of running that code.

What a checkpoint of the training loop holds is defined here too: :func:`snapshot` turns a
:class:`~segbench.training.LoopState` into a payload, :func:`restore` puts a payload back into one.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from segbench.atomic import atomic_write_bytes
from segbench.errors import SegbenchError
from segbench.rundir import CHECKPOINT_LATEST, CHECKPOINT_PREVIOUS, corrupt_path

if TYPE_CHECKING:
    from segbench.training import LoopState

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1  # version of the payload written by snapshot()


class CheckpointError(SegbenchError):
    """Checkpoints exist but none of them can be loaded."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects that only unpickling arbitrary code could restore."""


def save_checkpoint(folder: str | Path, payload: dict[str, Any]) -> Path:
    """Rotate latest → previous and atomically write ``payload`` as the new latest.

    ``payload`` must hold only tensors, numbers, strings, lists and dicts (what ``weights_only`` loading accepts).

    Raises:
        OSError: the write failed (e.g. disk full); the previous checkpoint is still in place.
    """
    folder = Path(folder)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    latest = folder / CHECKPOINT_LATEST
    if latest.exists():
        os.replace(latest, folder / CHECKPOINT_PREVIOUS)
    return atomic_write_bytes(latest, buffer.getvalue())


def load_checkpoint_file(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True``.

    Raises:
        UnsafeCheckpointError: the file needs arbitrary unpickling (it may carry code); it is not executed.
        CheckpointError: truncated or otherwise unreadable.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UnsafeCheckpointError(
                f"{path} contains pickled objects that could run code; segbench loads only plain weights "
                "(re-save it as a state_dict from a trusted source)"
            ) from None
        raise CheckpointError(f"{path} is corrupted ({exc})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is truncated or unreadable ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path} does not hold a segbench checkpoint dictionary")
    return payload


def load_latest_checkpoint(folder: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The newest loadable checkpoint of a job folder, or ``None`` when the folder has none.

    Falls back from a truncated/corrupt latest to previous with a warning.

    Raises:
        UnsafeCheckpointError: a checkpoint carries pickled code (never skipped silently).
        CheckpointError: checkpoint files exist but none is loadable.
    """
    folder = Path(folder)
    candidates = [folder / name for name in (CHECKPOINT_LATEST, CHECKPOINT_PREVIOUS) if (folder / name).exists()]
    if not candidates:
        return None
    failures: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            payload = load_checkpoint_file(path, map_location=map_location)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as exc:
            failures.append((path, str(exc)))
            log.warning("%s; falling back to an older checkpoint", exc)
            continue
        for bad, _ in failures:
            # Keep it for inspection, but out of the rotation: the next save must not push it over a good one.
            os.replace(bad, corrupt_path(bad))
        if failures:
            log.warning("resuming from %s (iteration %s)", path.name, payload.get("iteration"))
        return payload
    raise CheckpointError(
        f"no checkpoint in {folder} can be loaded ("
        + "; ".join(message for _, message in failures)
        + "); delete them to restart this job from scratch"
    )


def snapshot(loop: LoopState) -> dict[str, Any]:
    """The checkpoint payload of a training loop: weights, optimizer, AMP scaler, RNG states, progress, throughput.

    Holds only what ``weights_only`` loading accepts (tensors, numbers, strings, lists, dicts).
    """
    device = device_of(loop.model)
    return {
        "format": SNAPSHOT_FORMAT,
        "iteration": loop.iteration,
        "elapsed_s": loop.elapsed_s,
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict(),
        "scaler": loop.scaler.state_dict() if loop.scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "loss": loop.loss,
        "throughput": {key: float(value) for key, value in loop.meter.summary().items()},
    }


def restore(checkpoint: dict[str, Any], state: LoopState) -> None:
    """Load a :func:`snapshot` payload into ``state`` (model and optimizer in place, RNG states, progress).

    The AMP scaler's state is kept in ``state.scaler_state``: the training loop creates the scaler and loads it.

    Raises:
        CheckpointError: the payload does not fit the model or optimizer (or lacks a required key).
    """
    try:
        state.model.load_state_dict(checkpoint["model"])
        state.optimizer.load_state_dict(checkpoint["optimizer"])
        state.scaler_state = checkpoint.get("scaler") or None
        torch.set_rng_state(checkpoint["torch_rng"].cpu())
        device = device_of(state.model)
        if device.type == "cuda" and checkpoint.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
        state.iteration = int(checkpoint["iteration"])
        state.elapsed_s = float(checkpoint["elapsed_s"])
        state.loss = float(checkpoint.get("loss", math.nan))
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint does not match model {type(state.model).__name__}: {exc}") from None


def device_of(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
