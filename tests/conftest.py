"""Shared fixtures: tiny synthetic MSD tasks made by segbench's own generator, an isolated cache."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

TINY_SHAPE = (24, 24, 16)


_CACHE = tempfile.mkdtemp(prefix="segbench-test-cache-")


def pytest_configure(config):
    # Set before any fixture runs (module- and session-scoped fixtures come before function-scoped autouse ones):
    # tests never touch the user's ~/.cache/segbench, and runs compared with each other use identical numerics
    # (one thread, which also keeps the 2-core machine responsive).
    os.environ["SEGBENCH_CACHE"] = _CACHE
    torch.set_num_threads(1)


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def one_thread_job_processes(monkeypatch):
    """Job processes inherit ``OMP_NUM_THREADS=1``: the numerics of the one-thread in-process reference runs, and the
    2-core machine stays usable while a test runs several of them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_job_train():
    """A two-iteration training recipe on 16³ patches with one loader worker: real job processes, seconds each."""
    from segbench.config import TrainConfig

    return TrainConfig(iterations=2, patch_size=(16, 16, 16), batch_size=2, num_workers=1, log_every=1,
                       checkpoint_every=2)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> Path:
    """A 6-case synthetic Task02-like MSD folder of 24×24×16 volumes (shared, read-only by convention)."""
    from segbench.data.synth import make_synthetic_task

    return make_synthetic_task(
        tmp_path_factory.mktemp("data") / "Task", cases=6, test_cases=1, seed=3, shape=TINY_SHAPE
    )


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Install fake plugin distributions (tests/plugin_factory.py); they disappear after the test."""
    from plugin_factory import PluginInstaller

    from segbench import registry

    monkeypatch.delenv(registry.DISABLE_PLUGINS_ENV, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored afterwards: the fake distributions disappear
    installer = PluginInstaller(tmp_path)
    yield installer
    for module in installer.modules:
        sys.modules.pop(module, None)
    monkeypatch.undo()
    registry.refresh_plugins()
