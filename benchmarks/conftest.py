"""Benchmark-wide fixtures.

``SEGBENCH_BENCH_SMOKE=1`` (used by CI together with ``--benchmark-disable``) proves that the suite still runs: the
model and training benchmarks switch to tiny shapes and a single round and skip their performance assertions; the
data, inference and metric benchmarks keep their Task02-sized shapes and, with ``--benchmark-disable``, run their
bodies once untimed. Real figures come from a run without it.
"""

from __future__ import annotations

import os

import pytest
import torch


def smoke_mode() -> bool:
    return os.environ.get("SEGBENCH_BENCH_SMOKE", "").strip() not in ("", "0")


@pytest.fixture(scope="session")
def smoke() -> bool:
    """True in smoke mode: tiny shapes, no performance assertions."""
    return smoke_mode()


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when available (Task02-sized shapes), else CPU (small shapes)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
