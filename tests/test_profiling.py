"""Profiling helpers: parameter counts, memory, throughput statistics, environment, matmul reference."""

from __future__ import annotations

import doctest
import json
import math
import subprocess

import numpy as np
import psutil
import pytest
import torch
from torch import nn

import segbench
from segbench import profiling
from segbench.profiling import (
    ThroughputMeter,
    count_parameters,
    cuda_peak_mb,
    environment_info,
    matmul_peak_flops,
    peak_rss_mb,
    reset_cuda_peak,
    synchronize,
)


def test_count_parameters_counts_trainable_once():
    model = nn.Sequential(nn.Conv3d(1, 4, 3), nn.Conv3d(4, 2, 1))
    assert count_parameters(model) == (4 * 27 + 4) + (2 * 4 + 2)
    model[1].bias.requires_grad_(False)
    assert count_parameters(model) == (4 * 27 + 4) + 2 * 4
    tied = nn.Linear(3, 3, bias=False)
    assert count_parameters(nn.Sequential(tied, tied)) == 9


def test_peak_rss_is_in_mib_and_tracks_allocation():
    current = psutil.Process().memory_info().rss / 2**20
    peak = peak_rss_mb()
    # Wrong units (KiB or bytes read as MiB) would be off by a factor of 1024.
    assert current * 0.9 <= peak < current * 50
    block = np.ones(48 * 2**20, dtype=np.uint8)  # 48 MiB, touched
    assert peak_rss_mb() >= psutil.Process().memory_info().rss / 2**20 - 1
    del block


def test_cpu_device_paths_are_no_ops():
    for device in ("cpu", torch.device("cpu")):
        reset_cuda_peak(device)
        synchronize(device)
        assert cuda_peak_mb(device) == (None, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_sees_an_allocation():
    reset_cuda_peak("cuda")
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    synchronize("cuda")
    allocated, reserved = cuda_peak_mb("cuda")
    assert allocated >= 64 and reserved >= allocated
    del x


def test_throughput_meter_excludes_warmup():
    meter = ThroughputMeter(warmup=2)
    meter.record(data_wait_s=5.0, step_s=5.0, voxels=100)  # slow start-up: excluded from the rates
    meter.record(data_wait_s=0.0, step_s=3.0, voxels=100)
    for _ in range(4):
        meter.record(data_wait_s=0.25, step_s=0.75, voxels=1000)
    s = meter.summary()
    assert s["iterations"] == 6 and s["steady_iterations"] == 4
    assert s["iters_per_s"] == pytest.approx(1.0)
    assert s["voxels_per_s"] == pytest.approx(1000.0)
    assert s["data_wait_share"] == pytest.approx(0.25)
    assert s["mean_step_s"] == pytest.approx(0.75)
    assert s["total_s"] == pytest.approx(17.0)
    json.dumps(s)  # goes into result.json


def test_throughput_meter_short_runs_and_empty():
    meter = ThroughputMeter(warmup=3)
    assert math.isnan(meter.summary()["iters_per_s"]) and meter.summary()["iterations"] == 0
    meter.record(data_wait_s=1.0, step_s=1.0, voxels=10)
    s = meter.summary()
    assert s["steady_iterations"] == 1 and s["iters_per_s"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"data_wait_s": -1, "step_s": 1}, {"data_wait_s": 0, "step_s": math.nan}])
def test_throughput_meter_rejects_bad_times(kwargs):
    with pytest.raises(ValueError):
        ThroughputMeter().record(voxels=1, **kwargs)


def test_throughput_meter_docstring_example():
    results = doctest.testmod(profiling, verbose=False)
    assert results.failed == 0 and results.attempted >= 1


def test_environment_info_records_versions_and_git_commit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f.txt").write_text("x")
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()

    info = environment_info(cwd=tmp_path)
    assert info["git_commit"] == head
    assert info["torch"] == torch.__version__ and info["segbench"] == segbench.__version__
    assert info["numpy"] == np.__version__ and info["python"].count(".") == 2
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert isinstance(info["gpus"], list)
    json.dumps(info)


def test_environment_info_outside_git_is_silent(tmp_path, capfd):
    assert environment_info(cwd=tmp_path)["git_commit"] is None
    assert environment_info(cwd=tmp_path / "missing")["git_commit"] is None
    assert capfd.readouterr().err == ""


def test_matmul_peak_flops_is_plausible_on_cpu():
    flops = matmul_peak_flops("cpu", size=256, repeats=3)
    # Any CPU from the last 20 years does between 100 MFLOP/s and 100 TFLOP/s on a float32 matmul.
    assert 1e8 < flops < 1e14
    with pytest.raises(ValueError):
        matmul_peak_flops("cpu", size=0)
