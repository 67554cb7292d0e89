"""The metric catalogue: one entry per metric, and a metric registered there alone reaches every output."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from segbench.cli import main
from segbench.config import RunConfig, TrainConfig
from segbench.metrics import (
    CaseData,
    compute_case_metrics,
    metric_catalogue,
    metric_keys,
    metric_names,
    penalise,
    register_metric,
    summarise,
    unregister_metric,
)
from segbench.runner import run_comparison

BUILT_IN = ("dice", "hd", "hd95", "assd", "nsd")


def relative_volume_difference(case: CaseData) -> float:
    """(pred volume - ref volume) / ref volume; 0 when both masks are empty, +inf for a prediction of nothing."""
    if case.ref_voxels == 0:
        return 0.0 if case.pred_voxels == 0 else math.inf
    return (case.pred_voxels - case.ref_voxels) / case.ref_voxels


@pytest.fixture(scope="module")
def rvd():
    metric = register_metric("rvd", relative_volume_difference, label="RVD", higher_is_better=False,
                             miss_penalty=1.0, leaderboard=("mean", "median"),
                             definition="(predicted volume − reference volume) / reference volume.")  # fmt: skip
    yield metric
    unregister_metric("rvd")
    assert metric_names() == BUILT_IN


@pytest.fixture(scope="module")
def tiny_run(rvd, tiny_task: Path, tmp_path_factory) -> Path:
    """One real run (fcn, 2 folds, 2 iterations) with the report, made while ``rvd`` is registered."""
    run_dir = tmp_path_factory.mktemp("catalogue") / "run"
    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2,
                       train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0))  # fmt: skip
    outcome = run_comparison(config, run_dir=run_dir, progress=False, report=True)
    assert outcome.all_done, [r.reason for r in outcome.results]
    assert outcome.report_dir is not None
    return run_dir


def test_registered_metric_is_in_metrics_csv(tiny_run):
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    columns = list(metrics.columns)
    assert columns[columns.index("nsd") + 1] == "rvd"  # after the built-in metrics, before the volumes
    expected = (metrics["pred_volume_ml"] - metrics["ref_volume_ml"]) / metrics["ref_volume_ml"]
    np.testing.assert_allclose(metrics["rvd"], expected, rtol=1e-9)


def test_registered_metric_is_in_the_leaderboard_and_the_report(tiny_run):
    report = tiny_run / "report"
    summary = pd.read_csv(report / "summary.csv").set_index("model")
    metrics = pd.read_csv(tiny_run / "metrics.csv")
    assert summary.loc["fcn", "rvd_mean"] == pytest.approx(metrics["rvd"].mean(), rel=1e-5)
    assert summary.loc["fcn", "rvd_median"] == pytest.approx(metrics["rvd"].median(), rel=1e-5)
    md = (report / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| model | cases |"))
    assert "| RVD mean\\* |" in header and "| RVD median\\* |" in header
    assert "RVD = (predicted volume − reference volume) / reference volume. A miss counts as 1" in md
    assert (report / "figures" / "box_rvd_pen.png").is_file()
    assert "RVD (misses = 1): every out-of-fold case" in md


def test_registered_metric_is_in_the_evaluate_csv_and_summary(tiny_run, tiny_task, tmp_path):
    predictions = tiny_run / "jobs" / "fcn" / "fold_0" / "predictions"
    references = tmp_path / "gt"
    references.mkdir()
    for path in predictions.glob("*.nii.gz"):
        shutil.copy(tiny_task / "labelsTr" / path.name, references / path.name)
    out = tmp_path / "evaluate.csv"
    # In-process: a metric registered in this process does not exist in a `segbench` subprocess.
    result = CliRunner().invoke(main, ["evaluate", str(predictions), str(references), "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert "rvd" in frame.columns
    expected = (frame["pred_volume_ml"] - frame["ref_volume_ml"]) / frame["ref_volume_ml"]
    np.testing.assert_allclose(frame["rvd"], expected, rtol=1e-9)
    assert any(line.strip().startswith("rvd ") for line in result.output.splitlines())


def test_built_in_catalogue_and_row_keys():
    assert metric_names()[:5] == BUILT_IN
    assert metric_keys()[0] == "label" and metric_keys()[-1] == "diagonal_mm"
    hd95 = next(m for m in metric_catalogue() if m.name == "hd95")
    assert (hd95.unit, hd95.higher_is_better, hd95.miss_penalty, hd95.penalised_column) == ("mm", False, "diagonal",
                                                                                            "hd95_pen")  # fmt: skip
    dice = next(m for m in metric_catalogue() if m.name == "dice")
    assert dice.miss_penalty is None and dice.penalised_column == "dice"


def test_register_refuses_taken_or_invalid_names_and_unknown_penalties():
    for name in ("dice", "miss", "not a name"):
        with pytest.raises(ValueError, match="taken or not an identifier"):
            register_metric(name, relative_volume_difference)
    with pytest.raises(ValueError, match="miss_penalty"):
        register_metric("x", relative_volume_difference, miss_penalty="worst")
    with pytest.raises(ValueError, match="leaderboard statistics"):
        register_metric("x", relative_volume_difference, leaderboard=("mode",))
    with pytest.raises(KeyError, match="no metric"):
        unregister_metric("x")
    assert "x" not in metric_names()


def test_one_penalised_mean_and_median():
    diagonal = np.array([50.0, 50.0, 60.0, 60.0])
    values = penalise("hd95", [1.0, math.inf, 3.0, math.nan], diagonal)
    np.testing.assert_array_equal(values[:3], [1.0, 50.0, 3.0])
    assert math.isnan(values[3])  # no value stays no value
    summary = summarise(values)
    assert (summary.mean, summary.median, summary.n) == (pytest.approx(18.0), 3.0, 3)
    # Dice has no penalty: a miss is already 0.
    np.testing.assert_array_equal(penalise("dice", [0.0, 1.0], 9.0), [0.0, 1.0])


def test_both_empty_row_comes_from_the_catalogue():
    (row,) = compute_case_metrics(np.zeros((4, 4, 4), bool), np.zeros((4, 4, 4), bool), (1.0, 1.0, 1.0))
    assert [row[name] for name in BUILT_IN] == [1.0, 0.0, 0.0, 0.0, 1.0]
