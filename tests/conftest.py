"""Shared fixtures: tiny synthetic MSD tasks made by segbench's own generator, an isolated cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_SHAPE = (24, 24, 16)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Never touch the user's ~/.cache/segbench from tests.
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "segbench-cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> Path:
    """A 6-case synthetic Task02-like MSD folder of 24×24×16 volumes (shared, read-only by convention)."""
    from segbench.data.synth import make_synthetic_task

    return make_synthetic_task(
        tmp_path_factory.mktemp("data") / "Task", cases=6, test_cases=1, seed=3, shape=TINY_SHAPE
    )
