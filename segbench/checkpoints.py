"""Rotating, atomic, safe-to-load training checkpoints.

Two files per job folder: ``checkpoint_latest.pt`` and ``checkpoint_previous.pt``. Saving renames latest to
previous, then writes the new latest atomically (temp file, fsync, rename), so at every instant at least one complete
checkpoint exists — a kill in the middle of a write loses at most the newest one. Loading tries latest, falls back
to previous with a warning, and never silently restarts from scratch when checkpoints exist but none loads.

Every load uses ``torch.load(weights_only=True)``: a checkpoint from elsewhere that carries pickled code is refused
(:class:`UnsafeCheckpointError`) instead of running that code.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from segbench.atomic import atomic_write_bytes
from segbench.errors import SegbenchError

log = logging.getLogger(__name__)

LATEST = "checkpoint_latest.pt"
PREVIOUS = "checkpoint_previous.pt"


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
    latest = folder / LATEST
    if latest.exists():
        os.replace(latest, folder / PREVIOUS)
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
    candidates = [folder / name for name in (LATEST, PREVIOUS) if (folder / name).exists()]
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
            os.replace(bad, bad.with_name(bad.name + ".corrupt"))
        if failures:
            log.warning("resuming from %s (iteration %s)", path.name, payload.get("iteration"))
        return payload
    raise CheckpointError(
        f"no checkpoint in {folder} can be loaded ("
        + "; ".join(message for _, message in failures)
        + "); delete them to restart this job from scratch"
    )
