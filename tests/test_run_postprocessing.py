"""A run's postprocessing (segbench.run_postprocessing): decided once its folds are done, stored as JSON, scored
beside the raw metrics, kept on resume while its inputs hold, shown in the report and by `segbench evaluate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_fixtures import add_island, make_run_dir, write_job_results

from segbench import results, run_postprocessing, rundir
from segbench.report import write_report

ISLAND_CASES = ("la_003", "la_004", "la_008", "la_012")  # unet folds 0, 1, 3 and 2


@pytest.fixture
def run_with_islands(tmp_path: Path) -> Path:
    """fcn: one component per prediction (its first case empty); unet: the truth, with islands in some cases."""
    run = make_run_dir(tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["tolerance_mm"] = 2.0
    (run / "manifest.json").write_text(json.dumps(manifest))
    for case in ISLAND_CASES:
        add_island(next((run / "jobs" / "unet").glob(f"fold_*/predictions/{case}.nii.gz")))
    write_job_results(run)
    return run


def test_islands_are_removed_for_unet_and_fcn_is_left_alone(run_with_islands: Path):
    run = run_with_islands
    decisions = run_postprocessing.postprocess_run(run)
    assert decisions["unet"].applied == ((1,),) and decisions["fcn"].applied == ()
    stored = json.loads(rundir.postprocessing_path(run).read_text())
    unet = stored["models"]["unet"]
    assert unet["cases"] == 20 and unet["applied"] == [[1]] and unet["steps"][0]["accepted"] is True
    assert unet["dice_after"]["1"] == 1.0 > unet["dice_before"]["1"]
    assert stored["models"]["fcn"]["steps"][0]["accepted"] is False and len(unet["inputs"]) == 64

    raw, processed = results.load_metrics(run), results.load_postprocessed_metrics(run)
    assert list(processed.columns) == list(raw.columns) and len(processed) == len(raw)
    key = ["model", "fold", "repeat", "case_id", "label"]
    merged = raw.merge(processed, on=key, suffixes=("_raw", "_pp"))
    islands = merged[(merged["model"] == "unet") & merged["case_id"].isin(ISLAND_CASES)]
    assert (islands["hd95_pp"] < islands["hd95_raw"]).all() and (islands["hd95_pp"] == 0).all()
    assert (islands["dice_pp"] == 1.0).all()
    fcn = merged[merged["model"] == "fcn"]
    for column in ("dice", "hd95", "nsd", "pred_volume_ml"):
        assert fcn[f"{column}_raw"].equals(fcn[f"{column}_pp"]), column


def test_a_decision_is_kept_while_its_inputs_hold_and_redone_when_they_change(run_with_islands: Path, monkeypatch):
    run = run_with_islands
    run_postprocessing.postprocess_run(run)
    paths = (rundir.postprocessing_path(run), rundir.postprocessed_metrics_path(run))
    stamps = [p.stat().st_mtime_ns for p in paths]
    calls = []
    real = run_postprocessing.decide
    monkeypatch.setattr(run_postprocessing, "decide", lambda cases, labels: calls.append(1) or real(cases, labels))
    run_postprocessing.postprocess_run(run)
    assert calls == [] and [p.stat().st_mtime_ns for p in paths] == stamps  # nothing redone, nothing rewritten

    # fcn's fold 2 is predicted again (a new file): only fcn is decided again.
    add_island(run / "jobs" / "fcn" / "fold_2" / "predictions" / "la_005.nii.gz")
    decisions = run_postprocessing.postprocess_run(run)
    assert len(calls) == 1 and decisions["unet"].applied == ((1,),)
    # The table lost: the decisions are made again, whatever the JSON says.
    rundir.postprocessed_metrics_path(run).unlink()
    run_postprocessing.postprocess_run(run)
    assert len(calls) == 3 and rundir.postprocessed_metrics_path(run).is_file()


def test_a_model_with_a_failed_fold_gets_no_decision(tmp_path: Path):
    run = make_run_dir(tmp_path, failed={("fcn", 1): ("failed", "crashed")})
    write_job_results(run)
    decisions = run_postprocessing.postprocess_run(run)
    assert set(decisions) == {"unet"}
    assert set(results.load_postprocessed_metrics(run)["model"]) == {"unet"}
    decision, why = run_postprocessing.current_decision(run, "fcn")
    assert decision is None and "not all done" in why


def test_the_report_shows_each_decision_metrics_before_and_after_and_statistics_on_both(run_with_islands: Path):
    run_postprocessing.postprocess_run(run_with_islands)
    write_report(run_with_islands)
    text = (run_with_islands / "report" / "report.md").read_text()
    section = text[text.index("## Postprocessing") :]
    section = section[: section.index("\n## ", 5)]
    assert "| unet | 20 | largest foreground component | accepted |" in section
    assert "| fcn | 20 | largest foreground component | rejected |" in section
    assert "keep the largest foreground component" in section and "| fcn | none |" in section
    assert "→ 1.000" in section  # unet's Dice after
    assert "Statistics after postprocessing" in section and "Wilcoxon" in section
    assert "HD95" in section
    assert "Wilcoxon" in text[text.index("## Statistics") : text.index("## Postprocessing")]


def test_the_report_says_when_no_model_has_a_decision(tmp_path: Path):
    run = make_run_dir(tmp_path)
    write_report(run)
    text = (run / "report" / "report.md").read_text()
    assert "No model has a postprocessing decision yet" in text


def test_evaluate_run_dir_scores_raw_and_postprocessed(run_with_islands: Path):
    run = run_with_islands
    run_postprocessing.postprocess_run(run)
    cli = Path(sys.executable).with_name("segbench")
    proc = subprocess.run([str(cli), "evaluate", str(run)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "unet postprocessed (keep the largest foreground component; stored decision)" in proc.stdout
    raw = pd.read_csv(rundir.evaluation_path(run))
    processed = pd.read_csv(rundir.postprocessed_evaluation_path(run))
    assert list(processed.columns) == list(raw.columns)
    unet = processed[(processed["model"] == "unet") & processed["case_id"].isin(ISLAND_CASES)]
    assert (unet["dice"] == 1.0).all()
    stored = results.load_postprocessed_metrics(run)
    both = stored.merge(processed, on=["model", "case_id", "label"], suffixes=("", "_evaluated"))
    assert np.allclose(both["hd95"], both["hd95_evaluated"])


@pytest.mark.slow
def test_a_real_run_decides_after_its_folds_and_a_resume_keeps_the_decision(tiny_task: Path, tmp_path: Path,
                                                                             monkeypatch):  # fmt: skip
    from segbench.config import RunConfig, TrainConfig
    from segbench.runner import run_comparison

    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2,
                       train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0))  # fmt: skip
    run = tmp_path / "run"
    outcome = run_comparison(config, run_dir=run, progress=False, report=True)
    assert outcome.all_done
    stored = json.loads(rundir.postprocessing_path(run).read_text())["models"]
    assert set(stored) == {"fcn"} and stored["fcn"]["cases"] == 6
    raw, processed = results.load_metrics(run), results.load_postprocessed_metrics(run)
    assert len(processed) == len(raw) and list(processed.columns) == list(raw.columns)
    assert "## Postprocessing" in (run / "report" / "report.md").read_text()

    calls = []
    real = run_postprocessing.decide
    monkeypatch.setattr(run_postprocessing, "decide", lambda cases, labels: calls.append(1) or real(cases, labels))
    again = run_comparison(config, run_dir=run, resume=True, progress=False, report=False)
    assert again.all_done and calls == []
    assert json.loads(rundir.postprocessing_path(run).read_text())["models"] == stored


def test_evaluate_with_the_runs_dataset_moved_still_scores_the_raw_predictions(run_with_islands: Path):
    run = run_with_islands
    run_postprocessing.postprocess_run(run)
    moved = run.parent / "moved"
    (run.parent / "data").rename(moved)
    cli = Path(sys.executable).with_name("segbench")
    proc = subprocess.run([str(cli), "evaluate", str(run), str(moved / "labelsTr")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "unet: no postprocessing decision (the run's dataset cannot be read" in proc.stdout
    assert len(pd.read_csv(rundir.evaluation_path(run))) == 40
    assert not rundir.postprocessed_evaluation_path(run).exists()
