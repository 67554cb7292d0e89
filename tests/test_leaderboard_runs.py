"""A leaderboard of three real tiny runs: `segbench run` on three differently seeded and named synthetic datasets
(2 folds, 3 iterations), then `segbench leaderboard` through the console script. Slow tier: it trains 12 tiny jobs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segbench import rundir
from segbench.data.synth import make_synthetic_task

pytestmark = pytest.mark.slow

SEGBENCH = Path(sys.executable).parent / "segbench"
TINY = ["--iterations", "3", "--patch", "16", "16", "16", "--batch-size", "2", "--num-workers", "0", "--folds", "2"]
TINY_SHAPE = (24, 24, 16)
DATASETS = {"SyntheticA": 11, "SyntheticB": 12, "SyntheticC": 13}  # name → generator seed


def _segbench(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SEGBENCH), *map(str, args)], capture_output=True, text=True, timeout=900, env=env)


def _dataset(folder: Path, name: str, seed: int) -> Path:
    task = make_synthetic_task(folder, cases=4, test_cases=0, seed=seed, shape=TINY_SHAPE)
    meta = json.loads((task / "dataset.json").read_text(encoding="utf-8"))
    (task / "dataset.json").write_text(json.dumps({**meta, "name": name}, indent=2), encoding="utf-8")
    return task


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("leaderboard-runs")
    runs = []
    for name, seed in DATASETS.items():
        data = _dataset(root / "data" / name, name, seed)
        run = root / "runs" / name
        done = _segbench("run", "--data", data, "--models", "fcn,unet", *TINY, "--out", run, "-q")
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(run)
    return runs


def test_leaderboard_of_three_tiny_runs(tiny_runs, tmp_path):
    done = _segbench("leaderboard", *tiny_runs, "--out", tmp_path / "board", "--resamples", 100)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"leaderboard written: {tmp_path / 'board'}" in done.stdout
    consensus = re.search(r"consensus ranking by Dice over 3 datasets: (.+)", done.stdout).group(1)
    assert sorted(re.findall(r"\b(fcn|unet)\b", consensus)) == ["fcn", "unet"]
    # Two models: no Friedman test, and the command says why instead of failing.
    assert "The Friedman test cannot run: it needs at least 3 models" in done.stdout
    rankings = pd.read_csv(tmp_path / "board" / "rankings.csv")
    assert set(rankings["model"]) == {"fcn", "unet"} and (rankings["datasets"] == 3).all()
    assert sorted(rankings["rank_then_aggregate"]) in ([1.0, 2.0], [1.5, 1.5])
    per_dataset = pd.read_csv(tmp_path / "board" / "per_dataset.csv")
    assert set(per_dataset["dataset"]) == set(DATASETS) and per_dataset["params"].notna().all()
    page = (tmp_path / "board" / "leaderboard.html").read_text(encoding="utf-8")
    assert all(s.startswith("data:") for s in re.findall(r'\b(?:src|href)="([^"]*)"', page))
    for run in tiny_runs:
        report = (rundir.report_dir(run) / "report.html").read_text(encoding="utf-8")
        assert "Part of leaderboard" in report and "board/leaderboard.html" in report
