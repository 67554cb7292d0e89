"""The real nnU-Net (nnunetv2 2.8.1) as a reference, reached through a subprocess in its own interpreter.

segbench never imports nnunetv2: it is heavy and can pull a CUDA build of torch. Parity tests run a short script in
the reference interpreter instead and compare what it prints (JSON) or writes with segbench's own result.

The interpreter is ``$SEGBENCH_NNUNET_PYTHON`` or ``.nnunet-venv/bin/python`` in the repository root (made by
``.ci/nnunet-venv.sh``). Parity tests carry ``@pytest.mark.nnunet`` (a tier of their own) and skip with the
reason when the interpreter is unavailable (:func:`skip_without_nnunet`, called by :func:`run_nnunet`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
NNUNET_VERSION = "2.8.1"


def nnunet_python() -> Path | None:
    """The reference interpreter, or ``None`` when there is none."""
    configured = os.environ.get("SEGBENCH_NNUNET_PYTHON")
    candidate = Path(configured) if configured else REPO / ".nnunet-venv" / "bin" / "python"
    return candidate if candidate.exists() else None


@functools.cache
def _unavailable_reason() -> str | None:
    python = nnunet_python()
    if python is None:
        return "nnunetv2 reference interpreter not found: run .ci/nnunet-venv.sh (or set SEGBENCH_NNUNET_PYTHON)"
    probe = "import importlib.metadata as m; print(m.version('nnunetv2'))"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return f"{python} cannot import nnunetv2: {proc.stderr.strip().splitlines()[-1:]}"
    if proc.stdout.strip() != NNUNET_VERSION:
        return f"{python} has nnunetv2 {proc.stdout.strip()}, the parity tests need {NNUNET_VERSION}"
    return None


def skip_without_nnunet() -> None:
    """Skip the calling test, with the reason, when the reference interpreter is unavailable."""
    reason = _unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


def run_nnunet(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    """Run ``script`` in the reference interpreter with ``args`` as ``sys.argv[1:]``; return its stdout.

    nnU-Net reads its folders from ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results``: pass them in ``env``.
    Raises AssertionError with the script's stderr when it fails.
    """
    skip_without_nnunet()
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("PYTHONPATH", None)  # segbench's tree must not shadow anything in the reference interpreter
    proc = subprocess.run(
        [str(nnunet_python()), "-c", script, *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    assert proc.returncode == 0, f"nnunetv2 reference script failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def run_nnunet_json(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> Any:
    """:func:`run_nnunet` for a script whose last stdout line is one JSON document."""
    return json.loads(run_nnunet(script, *args, env=env, timeout=timeout).strip().splitlines()[-1])
