"""Console behaviour a new user meets (issue 17), through the real console entry point on tiny synthetic data:
refusals that leave nothing behind, defaults in --help, log-friendly progress, resume plans and commands, evaluating
a run directory, and models from the user's own module (--import)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from segbench import results, rundir
from segbench.config import InferenceConfig, TrainConfig
from segbench.data import synth
from segbench.rundir import JobKey
from segbench.runner import plan_patch, warn_small_patch

TINY = ["--iterations", "3", "--patch", "16", "16", "16", "--batch-size", "2", "--num-workers", "0", "--folds", "2"]
ESCAPES = ("\r", "\x1b[")


def segbench(*args: str, cwd: Path | None = None, prelude: str = "pass") -> subprocess.CompletedProcess:
    """The console entry point in a fresh process (stdout and stderr are pipes, not terminals)."""
    code = f"import sys; {prelude}; from segbench.cli import main; sys.argv[0] = 'segbench'; main()"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tiny_task: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A finished 2-model × 2-fold run with its report (shared by the tests that only read it)."""
    run_dir = tmp_path_factory.mktemp("partial") / "run"
    proc = segbench("run", "--data", str(tiny_task), "--models", "fcn,unet", *TINY, "--out", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


# --- 1 / 6: provenance and the merged predictions of a finished run --------------------------------------------------


@pytest.mark.slow
def test_the_run_records_its_command_and_merges_out_of_fold_predictions(finished_run, tiny_task):
    run_dir, _ = finished_run
    manifest = results.load_manifest(run_dir)
    assert manifest["command"].startswith("segbench run --data ") and "--models fcn,unet" in manifest["command"]
    page = (rundir.report_dir(run_dir) / "report.html").read_text(encoding="utf-8")
    assert "command: segbench run --data" in page
    cases = sorted(p.name for p in (tiny_task / "labelsTr").glob("*.nii.gz"))
    for model in ("fcn", "unet"):
        merged = rundir.oof_predictions_dir(run_dir, model)
        assert sorted(p.name for p in merged.iterdir()) == cases  # every case once, out of fold
        assert all(p.stat().st_nlink >= 2 for p in merged.iterdir())  # hard links to the job folders' files


# --- 3: progress in a log ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_progress_off_a_terminal_is_plain_lines(finished_run):
    _, proc = finished_run
    assert not any(code in proc.stderr for code in ESCAPES), proc.stderr[:2000]
    job_lines = [line for line in proc.stderr.splitlines() if ": done in " in line]
    assert len(job_lines) == 4
    assert all(" it/s, val Dice " in line for line in job_lines), job_lines
    assert "fcn fold 0: iteration 3/3, loss " in proc.stderr  # and one every tenth of a longer budget


@pytest.mark.slow
def test_quiet_keeps_one_line_per_job_and_verbose_adds_no_third_party_noise(tiny_task, tmp_path):
    quiet = segbench("run", "--data", str(tiny_task), "--models", "fcn", *TINY, "--out", str(tmp_path / "q"), "-q",
                     "--no-report")  # fmt: skip
    assert quiet.returncode == 0, quiet.stderr
    assert len([line for line in quiet.stderr.splitlines() if ": done in " in line]) == 2
    assert " iteration " not in quiet.stderr and not any(code in quiet.stderr for code in ESCAPES)
    verbose = segbench("-v", "run", "--data", str(tiny_task), "--models", "fcn", *TINY, "--out", str(tmp_path / "v"))
    assert verbose.returncode == 0, verbose.stderr
    assert "INFO segbench" in verbose.stderr
    assert not any(noise in verbose.stderr for noise in ("matplotlib", "findfont", "font_manager", "PIL")), [
        line for line in verbose.stderr.splitlines() if "matplotlib" in line or "PIL" in line
    ][:5]


# --- 2: no silent surprises ------------------------------------------------------------------------------------------


def test_resume_of_a_mistyped_folder_refuses_and_creates_nothing(tmp_path):
    proc = segbench("run", "--resume", "--out", str(tmp_path / "mistyped" / "run"))
    assert proc.returncode == 1 and "no run to resume in" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("problem", ["unknown model", "bad patch", "missing dataset", "cuda without GPU"])
@pytest.mark.slow
def test_a_refused_run_leaves_no_folder_behind(problem, tiny_task, tmp_path):
    if problem == "cuda without GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = {
        "unknown model": ["--models", "nosuchnet"],
        "bad patch": ["--patch", "15", "16", "16"],
        "missing dataset": ["--data", str(tmp_path / "nothing")],
        "cuda without GPU": ["--device", "cuda"],
    }
    base = ["run", "--data", str(tiny_task), "--models", "fcn", "--iterations", "3", "--folds", "2"]
    proc = segbench(*base, *args[problem], cwd=tmp_path)  # default --out: ./segbench-runs/run-<date>-<time>
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "segbench-runs").exists()
    proc = segbench(*base, *args[problem], "--out", str(tmp_path / "out" / "run"))
    assert proc.returncode == 1 and not (tmp_path / "out").exists()


def test_synth_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "data"
    small = ["--cases", "2", "--test-cases", "0", "--shape", "16", "16", "16"]
    assert segbench("data", "synth", str(out), *small).returncode == 0
    (out / "stray.txt").write_text("old")
    refused = segbench("data", "synth", str(out), *small, "--seed", "1")
    assert refused.returncode == 1 and "--force" in refused.stderr and (out / "stray.txt").exists()
    forced = segbench("data", "synth", str(out), *small, "--seed", "1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "stray.txt").exists()
    assert segbench("data", "check", str(out)).returncode == 0


def test_synth_shape_limits_in_help_match_what_is_accepted(tmp_path):
    from segbench.cli import data as cli_data

    assert (cli_data.SYNTH_MIN_SIDE, cli_data.SYNTH_DEFAULT_SHAPE) == (synth.MIN_SIDE, synth.DEFAULT_SHAPE)
    helped = segbench("data", "synth", "--help")
    assert f"at least {synth.MIN_SIDE}" in helped.stdout and "48 48 32" in helped.stdout
    side = synth.MIN_SIDE - 1
    refused = segbench("data", "synth", str(tmp_path / "x"), "--shape", str(side), "16", "16")
    assert refused.returncode == 2 and "--shape" in refused.stderr
    assert not (tmp_path / "x").exists()


def test_run_help_shows_every_default():
    text = " ".join(segbench("run", "--help").stdout.split())
    train, inference = TrainConfig(), InferenceConfig()
    defaults = {
        "--iterations": train.iterations,
        "--batch-size": train.batch_size,
        "--lr": train.lr,
        "--patch": " ".join(map(str, train.patch_size)),
        "--overlap": inference.overlap,
        "--checkpoint-every": train.checkpoint_every,
        "--num-workers": "auto",
    }
    for flag, default in defaults.items():
        after = text.split(f" {flag} ", 1)[1]
        shown = after.split("[default: ", 1)[1].split("]", 1)[0]
        # Recipe-dependent defaults show the tutorial recipe's value (the TrainConfig default) among the recipes'.
        assert shown == str(default) or f"tutorial: {default}" in shown, (flag, after[:200])


def test_a_default_patch_far_smaller_than_the_images_is_planned_and_explained():
    assert plan_patch((320, 320, 110), divisor=16) == (144, 144, 96)  # within the median shape and 128³ voxels
    assert plan_patch((20, 40, 40), divisor=16) == (16, 32, 32)
    warning = warn_small_patch(__import__("segbench.config").config.RunConfig(), (320, 320, 110), 16)
    assert "--patch not given" in warning and "--patch 144 144 96" in warning
    assert warn_small_patch(__import__("segbench.config").config.RunConfig(), (48, 48, 32), 16) is None


@pytest.mark.slow
def test_an_optional_model_without_its_package_says_what_to_install(tiny_task, tmp_path):
    no_monai = "sys.modules['monai'] = None"
    proc = segbench("run", "--data", str(tiny_task), "--models", "monai_unet", "--out", str(tmp_path / "r"),
                    prelude=no_monai)  # fmt: skip
    assert proc.returncode == 1 and "pip install 'segbench[monai]'" in proc.stderr, proc.stderr
    listed = segbench("models", "fcn", prelude=no_monai)
    assert listed.returncode == 0 and "not available: monai_unet needs MONAI" in listed.stderr


# --- 4: interruption, checkpoints and resume -------------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoint_every_is_an_option_and_is_checked(tiny_task, tmp_path):
    bad = segbench("run", "--data", str(tiny_task), "--checkpoint-every", "15", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "--checkpoint-every must be a positive multiple of" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_interrupted_run_prints_the_command_and_resume_lists_kept_continued_restarted(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    args = ["run", "--data", str(tiny_task), "--models", "fcn,unet", *TINY[2:], "--iterations", "400",
            "--checkpoint-every", "10", "--out", str(run_dir), "--no-report"]  # fmt: skip
    code = "import sys; from segbench.cli import main; sys.argv[0] = 'segbench'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    first = rundir.job_dir(run_dir, JobKey("fcn", 0)) / rundir.CHECKPOINT_LATEST
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert f"segbench run --resume --out {run_dir}" in stderr
    # Make the grid interesting: fcn fold 0 finished, fcn fold 1 never started; unet not started either.
    resumed = segbench("run", "--resume", "--out", str(run_dir), "--iterations", "400", "--no-report", "--job-timeout",
                       "0.001")  # fmt: skip
    plan = [line.split() for line in resumed.stderr.splitlines() if line.split()[:1] in (["continued"], ["restarted"])]
    assert ["continued", "fcn", "fold", "0"] == plan[0][:4], resumed.stderr
    assert {tuple(p[:4]) for p in plan[1:]} == {("restarted", m, "fold", f) for m in ("fcn", "unet") for f in "01"} - {
        ("restarted", "fcn", "fold", "0")
    }
    assert "1 continued, 3 restarted" in resumed.stderr


@pytest.mark.slow
def test_resume_keeps_finished_jobs(finished_run, tmp_path):
    run_dir, _ = finished_run
    proc = segbench("run", "--resume", "--out", str(run_dir), "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert "resume: 4 job(s) kept, 0 continued, 0 restarted" in proc.stderr


# --- 5: evaluate a run -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_a_run_directory_scores_every_models_out_of_fold_predictions(finished_run):
    run_dir, _ = finished_run
    proc = segbench("evaluate", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(rundir.evaluation_path(run_dir), dtype={"case_id": str})
    metrics = results.load_metrics(run_dir)
    merged = table.merge(metrics, on=["model", "case_id", "label"], suffixes=("", "_run"))
    assert len(merged) == len(metrics) == len(table)
    assert (merged["dice"] - merged["dice_run"]).abs().max() < 1e-9  # the same numbers as the run computed
    summary = pd.read_csv(rundir.report_dir(run_dir) / "summary.csv").set_index("model")
    for model in ("fcn", "unet"):  # one penalised median, shared with the report
        lines = proc.stdout.split(f"{model}: label 1:")[1].splitlines()
        line = next(text for text in lines if text.strip().startswith("hd95"))
        assert float(line.split("median")[1].split()[0]) == pytest.approx(summary.loc[model, "hd95_median"], abs=1e-4)


@pytest.mark.slow
def test_evaluate_errors_blame_the_right_argument(finished_run, tiny_task, tmp_path):
    run_dir, _ = finished_run
    missing = segbench("evaluate", str(tmp_path / "nope"), str(tiny_task / "labelsTr"))
    assert missing.returncode == 1 and "PRED_DIR" in missing.stderr and "--out" not in missing.stderr
    predictions = rundir.oof_predictions_dir(run_dir, "unet")
    root = segbench("evaluate", str(predictions), str(tiny_task), "--out", str(tmp_path / "x.csv"))
    assert root.returncode == 1 and str(tiny_task / "labelsTr") in root.stderr
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted(predictions.iterdir())[0]
    os.link(first, partial / first.name)
    strict = segbench("evaluate", str(partial), str(tiny_task / "labelsTr"))
    assert strict.returncode == 1 and "--subset" in strict.stderr
    subset = segbench("evaluate", str(partial), str(tiny_task / "labelsTr"), "--subset", "--labels", "1,2")
    assert subset.returncode == 0, subset.stderr
    assert "1 cases scored" in subset.stdout
    assert "--labels names label 2, which is in no prediction and no reference" in subset.stderr
    assert not any(code in subset.stdout + subset.stderr for code in ESCAPES)


# --- 7: models from the user's own module ----------------------------------------------------------------------------

MY_MODELS = """
from torch import nn
from segbench.registry import register_model

@register_model("mynet", family="mine", divisor=1)
def mynet(*, in_channels, out_channels):
    return nn.Sequential(nn.Conv3d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, out_channels, 1))
"""


@pytest.mark.slow
def test_models_registered_in_your_own_module_run_with_import(tiny_task, tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(MY_MODELS))
    listed = segbench("models", "--import", "mymodels", "mynet", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[2].split()[:3] == ["mynet", "mine", "mymodels"]
    run_dir = tmp_path / "run"
    proc = segbench("run", "--import", "mymodels", "--data", str(tiny_task), "--models", "mynet", *TINY,
                    "--out", str(run_dir), "--no-report", "-q", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(rundir.manifest_path(run_dir).read_text())["imports"] == {"mymodels": "mymodels"}
    assert set(results.load_jobs(run_dir)["status"]) == {"done"}
    unknown = segbench("run", "--import", "no_such_module", "--out", str(tmp_path / "r2"), cwd=tmp_path)
    assert unknown.returncode == 1 and "--import no_such_module" in unknown.stderr and not (tmp_path / "r2").exists()


def test_plain_progress_lines_come_about_every_tenth_of_the_budget():
    from segbench.progress import job_line, line_interval

    assert [line_interval(total, every=10) for total in (120, 5000, None)] == [20, 500, 100]
    record = {"job_seconds": 61.2, "train_iters_per_s": 2.04}
    line = job_line("unet fold 3", "done", "", record, [{"dice": 0.92}, {"dice": 0.94}])
    assert line == "unet fold 3: done in 61 s, 2.0 it/s, val Dice 0.93"
    assert job_line("unet fold 3", "oom", "out of GPU memory", {"job_seconds": 5}, []).endswith("— out of GPU memory")
    # A result the driver wrote for a dead job process has no job time: no "in nan s".
    assert job_line("unet fold 3", "killed", "SIGKILL", {}, []) == "unet fold 3: killed — SIGKILL"
