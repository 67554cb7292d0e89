"""Verdicts a reviewer accepts: common random numbers, repeats, the verdict rule and the wording of its edge cases."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from report_fixtures import make_run_dir

from segbench import results, rundir
from segbench.config import RunConfig, TrainConfig
from segbench.errors import RunDirectoryError
from segbench.registry import build_model
from segbench.report import compare_models, stats, tables, write_report
from segbench.runner import run_comparison

TINY = TrainConfig(iterations=4, patch_size=(16, 16, 16), batch_size=2, num_workers=0, log_every=2, checkpoint_every=2)


def tiny_run(data: Path, run_dir: Path, models: tuple[str, ...], *, resume: bool = False, **overrides):
    config = RunConfig(data=str(data), models=models, folds=2, device="cpu", train=TINY, **overrides)
    return run_comparison(config, run_dir=run_dir, progress=False, resume=resume)


# ---------------------------------------------------------------------------------------- common random numbers


@pytest.mark.parametrize("names", [("unet", "unet_w20_d2"), ("fcn", "fcn_w20_d2")])
def test_two_names_of_one_network_start_from_identical_weights(names):
    states = []
    for name in names:
        torch.manual_seed(123)
        states.append(build_model(name, in_channels=1, out_channels=1).state_dict())
    assert list(states[0]) == list(states[1])
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


@pytest.mark.slow
@pytest.mark.parametrize(("names", "workers"), [(("unet", "unet_w20_d2"), 0), (("fcn", "fcn_w20_d2"), 1)])
def test_aa_run_gives_identical_metrics_and_an_indistinguishable_verdict(tiny_task, tmp_path, names, workers):
    # num_workers 1 is the default loader path (a worker process); samples depend only on (seed, index) either way.
    config = RunConfig(data=str(tiny_task), models=names, folds=2, device="cpu",
                       train=dataclasses.replace(TINY, num_workers=workers))  # fmt: skip
    outcome = run_comparison(config, run_dir=tmp_path / "run", progress=False)
    assert outcome.all_done
    metrics = results.load_metrics(outcome.run_dir)
    wide = metrics.pivot_table(index=["case_id", "label"], columns="model", values=["dice", "hd95", "nsd", "assd"])
    for column in ("dice", "hd95", "nsd", "assd"):
        np.testing.assert_allclose(wide[column][names[0]], wide[column][names[1]], atol=1e-6)
    md = (outcome.report_dir.parent / "report.md").read_text(encoding="utf-8")
    assert f"{names[0]} and {names[1]} are indistinguishable in Dice: identical on all 6 common cases" in md
    assert f"{names[0]} beats" not in md and f"{names[1]} beats" not in md


# ------------------------------------------------------------------------------------------------------ repeats


@pytest.mark.slow
def test_repeated_run_layout_columns_report_and_resume(tiny_task, tmp_path):
    run_dir = tmp_path / "run"
    outcome = tiny_run(tiny_task, run_dir, ("fcn", "unet"), repeats=2)
    assert outcome.all_done and outcome.expected_jobs == 8
    for model in ("fcn", "unet"):
        for fold in (0, 1):
            for repeat in (0, 1):
                key = rundir.JobKey(model, fold, repeat, repeats=2)
                assert rundir.result_path(run_dir, key).is_file()
                assert rundir.job_dir(run_dir, key).name == f"repeat_{repeat}"
    jobs = results.load_jobs(run_dir)
    assert sorted(zip(jobs["model"], jobs["fold"], jobs["repeat"], strict=True)) == sorted(
        (m, f, r) for m in ("fcn", "unet") for f in (0, 1) for r in (0, 1)
    )
    metrics = results.load_metrics(run_dir)
    assert set(metrics["repeat"]) == {0, 1} and len(metrics) == 2 * 2 * 6
    # Repeats are different training seeds: their predictions differ (same splits).
    fcn = metrics[metrics["model"] == "fcn"].pivot_table(index="case_id", columns="repeat", values="dice")
    assert not np.allclose(fcn[0], fcn[1])
    md = (outcome.report_dir.parent / "report.md").read_text(encoding="utf-8")
    assert "## Training-seed variance" in md and "SD across repeats" in md
    assert "Verdict rule (2 repeats)" in md and "repeats ahead" in md

    # A killed job (no result.json) is the only one a resume reruns; finished ones stay byte for byte.
    killed = rundir.result_path(run_dir, rundir.JobKey("unet", 1, 1, repeats=2))
    kept = rundir.result_path(run_dir, rundir.JobKey("fcn", 0, 1, repeats=2))
    before = kept.read_bytes()
    killed.unlink()
    resumed = tiny_run(tiny_task, run_dir, ("fcn", "unet"), repeats=2, resume=True)
    assert resumed.all_done and killed.is_file() and kept.read_bytes() == before
    with pytest.raises(RunDirectoryError, match="repeats: 2 -> 3"):
        tiny_run(tiny_task, run_dir, ("fcn", "unet"), repeats=3, resume=True)


def test_one_repeat_keeps_the_flat_layout_and_iter_job_dirs_round_trips(tmp_path):
    assert rundir.job_dir(tmp_path, rundir.JobKey("unet", 3)) == tmp_path / "jobs" / "unet" / "fold_3"
    nested = rundir.JobKey("unet", 3, 1, repeats=3)
    assert rundir.job_dir(tmp_path, nested) == tmp_path / "jobs" / "unet" / "fold_3" / "repeat_1"
    rundir.job_dir(tmp_path, nested).mkdir(parents=True)
    rundir.job_dir(tmp_path, rundir.JobKey("fcn", 0)).mkdir(parents=True)
    found = list(rundir.iter_job_dirs(tmp_path))
    assert [key for key, _ in found] == [rundir.JobKey("fcn", 0), rundir.JobKey("unet", 3, 1)]
    assert all(rundir.job_dir(tmp_path, key) == folder for key, folder in found)
    assert rundir.job_label(nested) == "unet fold 3 repeat 1" and rundir.job_label(rundir.JobKey("x", 0)) == "x fold 0"


# ------------------------------------------------------------------------------------------------- verdict rule


def _two_models(seed: int, shifts: tuple[float, float], noise: float) -> pd.DataFrame:
    """per_case_table-like rows of models A and B: 3 folds × 2 repeats × 8 cases; A = B + shift of the repeat."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(3):
        for repeat, shift in enumerate(shifts):
            base = rng.uniform(0.7, 0.8, 8)
            for model, dice in (("A", base + shift + rng.normal(0, noise, 8)), ("B", base)):
                rows += [{"model": model, "fold": fold, "repeat": repeat, "case_id": f"c{fold}_{i}", "dice": value,
                          "miss": False, "labels": 1} for i, value in enumerate(dice)]  # fmt: skip
    return pd.DataFrame(rows)


def test_case_test_significant_but_inconsistent_across_repeats_gives_no_verdict():
    # A leads by a lot in repeat 0 and trails a little in repeat 1 of every fold: the case means favour A.
    (c,) = compare_models(_two_models(0, (0.1, -0.02), 0.001), "A", ["A", "B"])
    assert c.repeats == 2 and c.job_units == 6 and c.p_holm < 0.05
    assert c.repeat_wins == 1 and c.verdict == "not consistent"
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith("No verdict between A and B in Dice: A ahead by")
    assert "not consistent across repeats; ahead in 1 of 2 repeats" in sentence


def test_consistent_difference_over_repeats_is_a_verdict():
    (c,) = compare_models(_two_models(1, (0.05, 0.05), 0.005), "A", ["A", "B"])
    assert c.verdict == "beats" and c.repeat_wins == 2
    assert stats.comparison_sentence(c).startswith("A beats B by 0.04")
    assert "over 2 repeats" in stats.comparison_sentence(c) and "ahead in 2 of 2 repeats" in stats.comparison_sentence(
        c
    )


def test_repeat_interval_is_the_t_interval():
    low, high = stats.repeat_interval(np.array([0.80, 0.82, 0.84]))
    assert (low + high) / 2 == pytest.approx(0.82)
    assert high - 0.82 == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert all(math.isnan(v) for v in stats.repeat_interval(np.array([0.8])))


# -------------------------------------------------------------------------------------- wording and edge cases


def _series(values) -> pd.Series:
    return pd.Series(values, index=[f"c{i:02d}" for i in range(len(values))], dtype=float)


def test_zero_differences_are_counted_separately_from_the_tested_cases():
    ref = _series([0.9, 0.8, 0.85, 0.7, 0.75, 0.95, 0.6, 0.88, 0.5, 0.4])
    other = ref - np.array([0.05, 0.04, 0.06, 0.03, 0.07, 0.02, 0.05, 0.0, 0.0, 0.0])
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True)
    assert (c.n_cases, c.n_zero, c.n_tested) == (10, 3, 7)
    assert "7 cases + 3 with zero difference, not tested" in stats.comparison_sentence(c)


def test_a_significant_rank_test_beside_a_mean_ci_that_crosses_zero_is_no_verdict():
    # b is ahead on 26 of 30 cases by 0.03, a on four by 0.2: the signed ranks favour b (p < 0.05), the mean favours
    # b too, but its bootstrap CI straddles 0. "b beats a" beside that interval would contradict itself.
    ref = _series([0.80] * 26 + [0.95] * 4)
    other = _series([0.83 + 0.0001 * i for i in range(26)] + [0.75] * 4)
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True)
    assert c.p_value < 0.05 and c.ci_low < 0 < c.ci_high
    assert c.verdict == "mixed evidence" and not c.significant
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith("No verdict between a and b in Dice: the rank test gives p = ")
    assert "beats" not in sentence
    assert "but the 95% CI of the difference of means includes 0; b ahead by 0.000 Dice" in sentence


def test_ranks_and_mean_pointing_at_different_models_is_no_verdict():
    # b is ahead on 18 of 20 cases by 0.01, a on two by 0.5: the ranks favour b (significant), the mean favours a
    # with a CI above 0. Neither model may be called the winner.
    ref = _series([0.80] * 18 + [0.95, 0.95])
    other = _series([0.81 + 0.0001 * i for i in range(18)] + [0.20, 0.20])
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True,
                                n_resamples=2000)  # fmt: skip
    assert c.p_value < 0.05 and c.mean_diff > 0 and c.rank_direction == -1
    assert c.verdict == "mixed evidence"
    assert "the ranks favour b while the mean favours a" in stats.comparison_sentence(c)


def test_a_mean_ci_clear_of_zero_beside_a_non_significant_rank_test_is_mixed_evidence():
    # b is a little ahead on 12 of 20 cases, a far ahead on 8: the mean favours a with a CI above 0, the ranks do
    # not reach p < 0.05. "No significant difference" beside that interval would read as a contradiction.
    ref = _series([0.80] * 12 + [0.90] * 8)
    other = _series([0.81 + 0.001 * i for i in range(12)] + [0.60] * 8)
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True)
    assert not c.p_value < 0.05 and c.ci_low > 0
    assert c.verdict == "mixed evidence" and not c.significant
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith("No verdict between a and b in Dice: the rank test gives p = ")
    assert "yet the 95% CI of the difference of means excludes 0, so a few cases carry the difference" in sentence


def test_rank_direction_is_the_sign_of_the_signed_rank_sum():
    assert stats.rank_direction(np.array([0.1, 0.2, -0.05, 0.0])) == 1
    assert stats.rank_direction(np.array([-0.3, -0.2, 0.1])) == -1  # ranks: 3 + 2 against 1
    assert stats.rank_direction(np.array([-0.3, 0.1, 0.1])) == 0  # average ranks: 3 against 1.5 + 1.5
    assert stats.rank_direction(np.zeros(4)) == 0


def test_a_clear_difference_still_beats():
    ref = _series(np.linspace(0.85, 0.95, 12))
    c = stats.paired_comparison(ref, ref - 0.1, metric="Dice", reference_name="a", other_name="b",
                                higher_is_better=True)  # fmt: skip
    assert c.rank_direction == 1 and c.ci_excludes_zero and c.verdict == "beats"


def test_too_few_cases_for_significance_says_so():
    ref, other = _series([0.9, 0.8, 0.85]), _series([0.7, 0.6, 0.65])
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True)
    assert stats.min_attainable_p(3) == 0.25 and c.verdict == "too few cases"
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith("Too few paired cases to test a against b in Dice: 3 non-zero difference(s)")
    assert "No significant difference" not in sentence


def test_sentence_and_table_agree_in_direction():
    # best by Dice (unet) is worse by HD95: the sentence and the table both name fcn as the better one, +5.00 mm.
    ref = _series([20.0] * 8)
    other = _series([15.0 + 0.01 * i for i in range(8)])
    c = stats.with_holm([stats.paired_comparison(ref, other, metric="HD95", reference_name="unet", other_name="fcn",
                                                 higher_is_better=False, unit="mm",
                                                 statistic_name="penalised mean")])[0]  # fmt: skip
    from segbench.report import _comparison_table

    table = _comparison_table([c])
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert (row["better"], row["worse"]) == ("fcn", "unet") and float(row["advantage"]) > 0
    sentence = stats.comparison_sentence(c)
    assert sentence.startswith(f"fcn beats unet by {row['advantage']} mm HD95 (difference of penalised means")


def test_hd95_sentence_names_the_leaderboard_statistic(tmp_path):
    report = write_report(make_run_dir(tmp_path, n_folds=2, cases=[f"la_{i:03d}" for i in range(3, 15)]))
    md = (report.parent / "report.md").read_text(encoding="utf-8")
    hd95 = [line for line in md.splitlines() if line.startswith("- ") and " mm HD95 " in line]
    assert hd95 and all("penalised means" in line for line in hd95)
    assert "HD95 mean\\* (mm)" in md  # the leaderboard's penalised mean the sentence refers to


def test_tiny_p_values_never_read_zero():
    assert stats.p_cell(3e-7) == "< 0.0001" and stats.p_cell(0.01234) == "0.0123" and stats.p_cell(math.nan) == "–"
    ref = _series(np.linspace(0.8, 0.9, 30))
    other = ref - 0.1 - np.linspace(0, 0.01, 30)
    c = stats.with_holm([stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b",
                                                 higher_is_better=True)])  # fmt: skip
    from segbench.report import _comparison_table

    cells = " ".join(_comparison_table(c).rows[0])
    assert "0.0000" not in cells and "< 0.0001" in cells


def test_models_on_different_case_sets_are_compared_on_common_cases_only():
    ref = _series([0.9, 0.8, 0.85, 0.7, 0.75, 0.95, 0.6, 0.88])
    other = (ref - 0.1).iloc[:6]
    c = stats.paired_comparison(ref, other, metric="Dice", reference_name="a", other_name="b", higher_is_better=True)
    assert c.n_cases == 6 and c.cases_each == (8, 6)
    assert "only the 6 cases both have (a has 8, b 6)" in stats.comparison_sentence(c)


def test_one_repeat_report_says_seed_variance_was_not_measured(tmp_path):
    report = write_report(make_run_dir(tmp_path, n_folds=2, cases=[f"la_{i:03d}" for i in range(3, 15)]))
    md = (report.parent / "report.md").read_text(encoding="utf-8")
    assert "Training-seed variance was not measured" in md and "`--repeats 3`" in md
    board = next(line for line in md.splitlines() if line.startswith("| unet | 12 |"))
    assert "**" in board  # complete models are compared (and marked) as before


def test_report_warns_when_compared_jobs_ran_on_different_hardware(tmp_path):
    run = make_run_dir(tmp_path, n_folds=2, cases=[f"la_{i:03d}" for i in range(3, 15)])
    jobs = results.load_jobs(run)
    jobs["hardware"] = ["NVIDIA H100", "NVIDIA H100", "NVIDIA A100", "NVIDIA A100"]
    jobs["precision"] = "bf16"
    jobs.to_csv(rundir.jobs_table_path(run), index=False)
    report = write_report(run)
    md = (report.parent / "report.md").read_text(encoding="utf-8")
    assert "Warning: the compared jobs ran on different hardware" in md
    assert "different numeric precision" not in md
    board = tables.leaderboard(tables.per_case_table(results.load_metrics(run)), jobs, models=["fcn", "unet"])
    table = tables.format_costs(board)  # costs have their own table
    iters = table.columns.index("train it/s")
    assert not any(column == iters for _, column in table.best)  # throughput not compared across hardware


# ------------------------------------------------------------------------------------ metric inputs that mislead


def test_scoring_label_zero_is_refused_with_the_way_to_score_background():
    from segbench.metrics import compute_case_metrics

    pred = np.zeros((4, 4, 4), np.uint8)
    pred[1:3, 1:3, 1:3] = 1
    with pytest.raises(ValueError, match=r"pass boolean masks instead, e.g. compute_case_metrics\(pred == 0"):
        compute_case_metrics(pred, pred.copy(), (1.0, 1.0, 1.0), labels=[0])
    (row,) = compute_case_metrics(pred == 0, pred == 0, (1.0, 1.0, 1.0))  # background as a boolean mask
    assert row["dice"] == 1.0 and not row["pred_empty"]


def test_nsd_tolerance_below_the_voxel_spacing_warns(tiny_task, caplog):
    from segbench.metrics import nsd_tolerance_warning
    from segbench.runner import preflight_dataset

    assert nsd_tolerance_warning(4.0, (3.125, 3.125, 3.4)) is None
    message = nsd_tolerance_warning(2.0, (3.125, 3.125, 3.4), flag="--tolerance-mm")
    assert "below the largest voxel spacing 3.4 mm" in message and "--tolerance-mm 3.5" in message
    with caplog.at_level("WARNING"):
        preflight_dataset(tiny_task, progress=False, tolerance_mm=2.0)
    assert "NSD tolerance 2 mm is below the largest voxel spacing" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        preflight_dataset(tiny_task, progress=False, tolerance_mm=RunConfig().tolerance_mm)
    assert "NSD tolerance" not in caplog.text  # the default τ is informative on the embedded dataset's spacing


def test_tolerance_and_repeats_flags_reach_the_config():
    from segbench.cli.run import _config_from_options, run

    ctx = run.make_context("run", ["--repeats", "3", "--tolerance-mm", "5"])
    config = _config_from_options(ctx.params, ctx)
    assert (config.repeats, config.tolerance_mm) == (3, 5.0)
    default = run.make_context("run", [])
    assert _config_from_options(default.params, default).repeats == 1


def test_nnunet_splits_need_five_folds():
    from segbench.errors import ConfigError

    with pytest.raises(ConfigError, match="--splits nnunet makes nnU-Net's 5 folds; drop --folds 3"):
        RunConfig(splits="nnunet", folds=3)
    assert RunConfig(splits="nnunet", folds=5).folds == 5


# ----------------------------------------------------------------------------------------- comparable conditions


def test_resume_refuses_a_device_type_change_but_not_another_gpu_index():
    from segbench.runner import device_type, manifest_differences

    base = {"config": {"device": "cpu", "train": {}}, "models": ["fcn"], "dataset": {"fingerprint": "x", "path": "d"}}

    def manifest(device: str) -> dict:
        return {**base, "config": {**base["config"], "device": device}, "device_type": device_type(device)}

    assert manifest_differences(manifest("cpu"), manifest("cuda")) == [
        "device: cpu -> cuda (training on another device type changes the numerics)"
    ]
    assert manifest_differences(manifest("cuda:0"), manifest("cuda:1")) == []
    assert manifest_differences(manifest("cuda"), manifest("auto")) == []  # Slurm: resolved where the job runs
