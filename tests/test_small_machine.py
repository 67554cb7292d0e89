"""Real-size data on a small machine (issue 29): README commands, the cost estimate and its comparison, warnings that
fit the device, per-case prediction resume, per-case progress lines, `segbench evaluate RUN_DIR` with the run's own
settings, the visible cache and `segbench cache`, `segbench models --memory` at the precision `auto` resolves to.

CLI tests go through the real console entry point on tiny synthetic data (stdout and stderr are pipes, not terminals).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from segbench import results, rundir
from segbench.config import InferenceConfig, RunConfig, TrainConfig
from segbench.rundir import JobKey
from segbench.splits import load_splits

ROOT = Path(__file__).parents[1]
PATCH = ["--patch", "16", "16", "24"]  # wider than the tiny cases' 16 voxels along W: the oversized-patch warning
TINY = ["--iterations", "3", *PATCH, "--batch-size", "2", "--num-workers", "0", "--folds", "2"]


def segbench(*args: str, cache: Path | None = None) -> subprocess.CompletedProcess:
    """The console entry point in a fresh process; ``cache`` becomes its $SEGBENCH_CACHE."""
    code = "import sys; from segbench.cli import main; sys.argv[0] = 'segbench'; main()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if cache is not None:
        env["SEGBENCH_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def small_run(tiny_task: Path, tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """A finished 2-model × 2-fold run with its report and a cache of its own: (run dir, cache, process)."""
    root = tmp_path_factory.mktemp("small")
    run_dir, cache = root / "run", root / "cache"
    proc = segbench("run", "--data", str(tiny_task), "--models", "fcn,unet", *TINY, "--tolerance-mm", "3",
                    "--out", str(run_dir), cache=cache)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return run_dir, cache, proc


# --- 1: README commands ----------------------------------------------------------------------------------------------


def test_the_readme_starts_with_two_commands_that_work_from_an_empty_folder():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    top = text.split("## What you get")[0]
    blocks = re.findall(r"```bash\n(.*?)```", top, flags=re.S)
    assert len(blocks) == 2 and all(len(block.strip().splitlines()) == 1 for block in blocks), blocks
    first, second = (block.strip() for block in blocks)
    assert "root folder of a clone of this repository" in top  # where both commands run
    steps = [step.strip() for step in first.split("&&")]
    assert steps[0] == "python3 -m venv .venv" and steps[1] == ". .venv/bin/activate"  # a fresh environment
    assert steps[2] == "pip install -e ." and steps[3] == "segbench run --folds 5"
    second_steps = [step.strip() for step in second.split("&&")]
    assert second_steps[0] == ". .venv/bin/activate"  # works from a new shell in the clone too
    extra = re.fullmatch(r"pip install -e '\.\[(\w+)\]'", second_steps[1])
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
    assert extra and extra.group(1) in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]  # fmt: skip
    assert second_steps[2] == "pytest"
    # The segbench command parses as written (options exist and take those values).
    from click.testing import CliRunner

    from segbench.cli import main

    parsed = CliRunner().invoke(main, [*steps[3].split()[1:], "--help"])
    assert parsed.exit_code == 0, parsed.output


# --- 2: the cost estimate, recorded and compared ---------------------------------------------------------------------


@pytest.mark.slow
def test_the_run_states_its_cost_before_the_first_job_and_the_report_compares(small_run):
    run_dir, _, proc = small_run
    stderr = proc.stderr
    assert stderr.index("Estimate before the first job (4 job(s) on cpu") < stderr.index("[1/4]")
    for model in ("fcn", "unet"):
        assert re.search(rf"  {model}: .* per job = training .* \(3 it x .* s\) \+ prediction .* \(3 cases x 4 "
                         r"windows x .* s\); peak tensor memory \d+ MiB per step", stderr), stderr  # fmt: skip
    estimate = results.load_manifest(run_dir)["estimate"]
    jobs = results.load_jobs(run_dir).set_index(["model", "fold"])
    for record in estimate["models"]:
        assert record["jobs"] == 2 and record["step_s"] > 0 and record["window_s"] > 0
        # Both figures are stored rounded to 4 decimals, so 3 x the rounded step can be off by up to 2e-4.
        assert record["train_s"] == pytest.approx(3 * record["step_s"], abs=2e-4)
        # The exact estimator agrees with the job's own real measurement: the same figure, before the job.
        measured = jobs.loc[(record["model"], 0), "tensor_peak_mb"]
        assert record["tensor_peak_mb"] == pytest.approx(measured, abs=0.01)
    assert estimate["windows_per_case"] == 4  # 2 x 2 x 1: 24 voxels along D and H at patch 16, W padded to 24
    report = (rundir.report_dir(run_dir) / "report.md").read_text(encoding="utf-8")
    section = report.split("## Cost estimate and outcome")[1].split("\n## ")[0]
    assert "ratio = measured / estimated" in section and "| unet | job time (s) |" in section
    assert re.search(r"Job times: [0-2] of 2 model\(s\) within 1.5x", section)


def test_the_comparison_says_which_figures_are_within_one_and_a_half_times():
    from segbench.report.estimate import comparison_frame

    estimate = {"windows_per_case": 4, "models": [
        {"model": "a", "job_s": 10.0, "train_s": 8.0, "window_s": 0.5, "tensor_peak_mb": 100.0},
        {"model": "b", "job_s": 10.0, "train_s": 8.0, "window_s": 0.5, "tensor_peak_mb": 100.0},
    ]}  # fmt: skip
    jobs = pd.DataFrame({"model": ["a", "a", "b"], "status": ["done", "done", "failed"],
                         "job_seconds": [14.0, 16.0, 1.0], "train_seconds": [4.0, 6.0, 1.0],
                         "inference_seconds_per_case": [2.0, 2.0, 1.0],
                         "tensor_peak_mb": [100.0, 100.0, 1.0]})  # fmt: skip
    frame = comparison_frame(estimate, jobs).set_index(["model", "measure"])
    assert (
        frame.loc[("a", "job time (s)"), "ratio"] == pytest.approx(1.5) and frame.loc[("a", "job time (s)"), "within"]
    )
    assert frame.loc[("a", "training time (s)"), "ratio"] == pytest.approx(5 / 8)
    assert not frame.loc[("a", "training time (s)"), "within"]  # 0.625 < 1 / 1.5
    assert frame.loc[("a", "prediction per case (s)"), "ratio"] == pytest.approx(1.0)
    assert math.isnan(frame.loc[("b", "job time (s)"), "measured"])  # a failed job is no outcome to compare with


def test_when_prediction_dominates_the_estimate_names_what_reduces_it():
    from segbench.estimate import CostEstimate, ModelEstimate, prediction_advice
    from segbench.geometry import CaseGeometry

    config = RunConfig(train=TrainConfig(patch_size=(32, 32, 32)), inference=InferenceConfig(mirror=True, overlap=0.5))
    case = CaseGeometry("la_003", (128, 128, 96), (1.25, 1.25, 1.37), (128, 128, 96), 1)
    slow = ModelEstimate("unet", 5, 0.2, 100, 20.0, 1.0, 300.0, 330.0, 50.0)
    estimate = CostEstimate((slow,), "cpu", "fp32", "channels_last", 245.0, 4.0, 0.5, 10.0, {})
    advice = "\n".join(prediction_advice(estimate, config, [case]))
    assert "prediction (25.0 min over all jobs) takes longer than training (1.7 min)" in advice
    assert "--no-mirror: 8x fewer forward passes" in advice
    assert "--overlap 0.25: 100 windows per case instead of 245" in advice  # 5 x 5 x 4 windows at overlap 0.25
    assert "--target-spacing" in advice
    fast = ModelEstimate("unet", 5, 0.2, 100, 20.0, 0.01, 3.0, 33.0, 50.0)
    assert prediction_advice(CostEstimate((fast,), "cpu", "fp32", "channels_last", 245.0, 4.0, 0.5, 10.0, {}),
                             config, [case]) == []  # fmt: skip


# --- 3: warnings that fit the device ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_patch_larger_than_an_image_names_the_smallest_image_and_the_padding(small_run):
    _, _, proc = small_run
    assert "--patch 16 16 24 is larger than case la_003 (24x24x16 voxels; W 16 < 24)" in proc.stderr
    assert "33% of each window of it is padding" in proc.stderr
    from segbench.geometry import CaseGeometry, oversized_patch_warning

    cases = [CaseGeometry(name, shape, (1.0,) * 3, shape, 1) for name, shape in
             [("big", (64, 64, 64)), ("small", (40, 20, 30)), ("mid", (48, 30, 64))]]  # fmt: skip
    warning = oversized_patch_warning(cases, (32, 32, 32))
    assert "larger than case small (40x20x30 voxels; H 20 < 32, W 30 < 32); 1 other case(s)" in warning
    assert f"{1 - 40 * 20 * 30 / (40 * 32 * 32):.0%} of each window" in warning
    assert oversized_patch_warning(cases[:1], (32, 32, 32)) is None


def test_the_default_patch_suggestion_fits_the_cpu_time_of_a_job():
    from segbench.geometry import CaseGeometry
    from segbench.patch_advice import CPU_JOB_TRAIN_S, patch_warnings

    config = RunConfig(train=TrainConfig(iterations=120))
    cases = [CaseGeometry(f"c{i}", (320, 320, 110), (1.25, 1.25, 1.37), (320, 320, 110), 1) for i in range(3)]
    warnings = patch_warnings(config, geometry=cases, models=["fcn"], divisor=4, device="cpu", channels=(1, 1),
                              planned=True)  # fmt: skip
    assert len(warnings) == 1 and "--patch not given" in warnings[0]
    text = warnings[0]
    assert "On this CPU one fcn step at 32x32x24 takes" in text
    fitted = tuple(int(v) for v in text.split("is --patch ")[-1].split(" (")[0].split())
    step = float(text.split("(about ")[1].split(" s a step")[0])
    assert step <= CPU_JOB_TRAIN_S / 120 * 1.05  # within the time a job's 120 iterations may take (rounding)
    assert all(side % 4 == 0 for side in fitted) and math.prod(fitted) <= 128**3
    assert planned_patch_of(text) != fitted or step <= CPU_JOB_TRAIN_S / 120


def planned_patch_of(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split("voxels) gives --patch ")[1].split(";")[0].split())


def test_the_gpu_suggestion_fits_the_memory_limit_by_the_exact_estimator():
    from segbench.memory import estimate_memory
    from segbench.patch_advice import fit_patch_to_memory
    from segbench.runner import plan_patch

    def peak_mb(patch):
        return float(estimate_memory(["fcn"], patch_size=patch, batch_size=2, memory_format="contiguous")
                     ["tensor_peak_mb"].max())  # fmt: skip

    median, limit = (160, 160, 96), 400.0
    assert peak_mb(plan_patch(median, divisor=16)) > limit  # the nnU-Net-style plan does not fit
    fitted, peak = fit_patch_to_memory(median, divisor=16, peak_mb=peak_mb, limit_mb=limit)
    assert peak <= limit and peak == pytest.approx(peak_mb(fitted))
    assert math.prod(fitted) > 16**3 and all(side % 16 == 0 for side in fitted)


@pytest.mark.slow
def test_models_and_patch_are_checked_before_any_image_is_read(tiny_task, tmp_path):
    broken = tmp_path / "Task"
    shutil.copytree(tiny_task, broken)
    image = next((broken / "imagesTr").glob("la_*.nii.gz"))
    image.write_bytes(image.read_bytes()[:200])  # truncated: preflight would fail on it
    typo = segbench("run", "--data", str(broken), "--models", "fcn,unte", "--out", str(tmp_path / "a"))
    assert typo.returncode == 1 and "unte" in typo.stderr and "preflight" not in typo.stderr, typo.stderr
    patch = segbench("run", "--data", str(broken), "--patch", "16", "16", "18", "--out", str(tmp_path / "b"))
    assert patch.returncode == 1 and "divisible by 4" in patch.stderr and "preflight" not in patch.stderr
    good = segbench("run", "--data", str(broken), "--models", "fcn", "--out", str(tmp_path / "c"))
    assert good.returncode == 1 and "failed preflight" in good.stderr  # the same data with valid models: preflight


# --- 4: prediction resumes per case ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_interrupted_prediction_keeps_its_finished_cases_and_the_resume_predicts_only_the_rest(
    tiny_task, tmp_path, monkeypatch
):
    from segbench import job
    from segbench.runner import run_comparison

    config = RunConfig(data=str(tiny_task), models=("fcn",), folds=2,
                       train=TrainConfig(iterations=2, patch_size=(16, 16, 16), num_workers=0))  # fmt: skip
    reference = run_comparison(config, run_dir=tmp_path / "reference", progress=False, report=False)
    assert reference.all_done
    real, calls = job._predict_case, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second case of the first job
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(job, "_predict_case", interrupted)
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_comparison(config, run_dir=run_dir, progress=False, report=False)
    first = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE)
    assert first.status == "killed"
    written = sorted(rundir.predictions_dir(run_dir, JobKey("fcn", 0)).glob("*.nii.gz"))
    assert len(written) == 1  # the finished case, complete
    before = written[0].stat()

    monkeypatch.setattr(job, "_predict_case", real)
    calls.clear()
    outcome = run_comparison(config, run_dir=run_dir, resume=True, progress=False, report=False)
    assert outcome.all_done
    resumed = results.read_job_result(rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.RESULT_FILE)
    assert resumed.job["predictions_kept"] == 1 and resumed.job["num_val_cases"] == 3
    after = written[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # kept, not written again
    assert results.load_jobs(run_dir).set_index("fold").loc[1, "predictions_kept"] == 0
    columns = ["model", "fold", "case_id", "dice", "hd95", "nsd"]
    pd.testing.assert_frame_equal(results.load_metrics(run_dir)[columns], results.load_metrics(tmp_path /
                                  "reference")[columns])  # fmt: skip


def test_predictions_of_other_weights_are_removed_not_scored(tmp_path):
    import torch

    from segbench.case_predictions import PredictionLedger, weights_digest

    key = JobKey("fcn", 0)
    first, second = torch.nn.Conv3d(1, 1, 3), torch.nn.Conv3d(1, 1, 3)
    ledger = PredictionLedger(tmp_path, key, weights_digest(first))
    ledger.path("la_003").write_bytes(b"complete prediction")
    assert PredictionLedger(tmp_path, key, weights_digest(first)).kept("la_003")
    assert weights_digest(first) != weights_digest(second)
    assert not PredictionLedger(tmp_path, key, weights_digest(second)).kept("la_003")
    assert not ledger.path("la_003").exists()


# --- 5: a plain progress line per case off a terminal ----------------------------------------------------------------


@pytest.mark.slow
def test_off_a_terminal_every_predicted_case_gets_a_plain_line_with_its_time(small_run):
    run_dir, _, proc = small_run
    for model in ("fcn", "unet"):
        for fold, split in enumerate(load_splits(rundir.splits_path(run_dir))):
            for index, case_id in enumerate(split["val"], start=1):
                pattern = rf"{model} fold {fold}: case {case_id} \({index}/{len(split['val'])}\) predicted in [0-9.]+ s"
                assert re.search(pattern, proc.stderr), pattern
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr


# --- 6: evaluate RUN_DIR with the run's own tolerance and labels -----------------------------------------------------


@pytest.mark.slow
def test_evaluate_run_dir_uses_and_prints_the_runs_tolerance_and_labels(small_run):
    run_dir, cache, _ = small_run
    proc = segbench("evaluate", str(run_dir), cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert "NSD tolerance 3 mm (the run's --tolerance-mm); labels 1 (left atrium) (the run's dataset)" in proc.stdout
    table = pd.read_csv(rundir.evaluation_path(run_dir), dtype={"case_id": str})
    merged = table.merge(results.load_metrics(run_dir), on=["model", "case_id", "label"], suffixes=("", "_run"))
    assert len(merged) == len(table) == 12 and (merged["tolerance_mm"] == 3).all()
    assert (merged["nsd"] - merged["nsd_run"]).abs().max() < 1e-12  # NSD at the run's tolerance, not 2 mm
    summary = pd.read_csv(rundir.report_dir(run_dir) / "summary.csv").set_index("model")
    for model in ("fcn", "unet"):
        lines = proc.stdout.split(f"{model}: label 1:")[1].splitlines()
        for metric in ("dice", "nsd"):
            line = next(text for text in lines if text.strip().startswith(metric))
            mean = float(line.split("mean")[1].split()[0])
            assert mean == pytest.approx(summary.loc[model, f"{metric}_mean"], abs=1e-4)  # the report's number
    other = segbench("evaluate", str(run_dir), "--tolerance-mm", "2", cache=cache)
    assert "the run used 3 mm, so NSD differs from its report" in other.stdout


# --- 8: segbench models --memory at the precision auto resolves to ---------------------------------------------------


def test_models_memory_defaults_to_the_precision_auto_resolves_to_and_says_which():
    from click.testing import CliRunner

    from segbench.cli import main
    from segbench.memory import estimate_memory
    from segbench.precision import resolve_precision

    result = CliRunner().invoke(main, ["models", "fcn", "--memory", "--patch", "16", "16", "16"])
    assert result.exit_code == 0, result.output
    resolved = resolve_precision("auto", "cpu")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"precision auto resolves to {resolved} here (cpu: ")
    assert f"patch 16x16x16, batch 2, {resolved}," in lines[1]
    row = next(line for line in lines if line.startswith("fcn "))
    expected = estimate_memory(["fcn"], patch_size=(16, 16, 16), batch_size=2, precision=resolved)
    assert float(row.split()[1]) == pytest.approx(expected.loc[0, "tensor_peak_mb"], abs=0.06)


# --- 7: the cache, visible and removable (last: it empties the module run's cache) ------------------------------------


@pytest.mark.slow
def test_the_cache_is_printed_recorded_listed_and_removable_by_age_and_dataset(small_run, tiny_task):
    from segbench.data.cache import folder_bytes

    run_dir, cache, proc = small_run
    preprocessed = cache / "preprocessed"
    manifest = results.load_manifest(run_dir)
    assert manifest["cache"]["path"] == str(preprocessed) and manifest["cache"]["cases"] == 6
    entries = [p for p in preprocessed.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 6
    actual = sum(folder_bytes(p) for p in entries)
    assert manifest["cache"]["bytes"] == pytest.approx(actual, rel=0.05)  # the size stated before preparing
    assert f"  cache: {preprocessed} holds " in proc.stderr and "(0 of 6 case(s) already prepared)" in proc.stderr

    listing = segbench("cache", cache=cache)
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("preprocessed"))
    assert row.split()[1:3] == [_dataset_name(tiny_task), "6"]
    assert str(tiny_task.resolve()) in row and "min ago" in row
    kept = segbench("cache", "--older-than", "1", "--clear", cache=cache)
    assert "removed 0 entries" in kept.stdout and len(list(preprocessed.iterdir())) == 7  # 6 entries + the index
    missing = segbench("cache", "--dataset", "NoSuchTask", "--clear", cache=cache)
    assert missing.returncode == 1 and "matches no cache entry" in missing.stderr
    cleared = segbench("cache", "--dataset", str(tiny_task), "--clear", cache=cache)
    assert cleared.returncode == 0 and "removed 6 entries" in cleared.stdout, cleared.stdout
    assert not [p for p in preprocessed.iterdir() if not p.name.startswith(".")]
    assert "(empty)" in segbench("cache", cache=cache).stdout


def _dataset_name(task: Path) -> str:
    from segbench.data.dataset import load_dataset

    return load_dataset(task).name
