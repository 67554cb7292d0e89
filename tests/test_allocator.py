"""Job processes keep freed memory for the next step (segbench.allocator)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_glibc_accepts_the_job_allocator_settings():
    # In a child, so that this test process's allocator stays as it was.
    code = "from segbench.allocator import keep_freed_memory; raise SystemExit(0 if keep_freed_memory() else 1)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_job_process_sets_the_allocator_up_before_its_job(monkeypatch):
    from segbench.executors import worker

    calls = []
    monkeypatch.setattr(worker, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(worker, "run_job", lambda spec: (_ for _ in ()).throw(RuntimeError("stop here")))
    monkeypatch.setattr(worker, "_log_to_worker_log", lambda spec: None)
    monkeypatch.setattr(worker, "log_job_start", lambda spec: None)
    monkeypatch.setattr(worker, "install_interrupt_handlers", lambda: None)
    spec = '{"run_dir": "/nonexistent", "model": "fcn", "fold": 0, "device": "cpu"}'
    with pytest.raises(RuntimeError, match="stop here"):
        worker.worker_main([spec])
    assert calls == ["malloc"]
