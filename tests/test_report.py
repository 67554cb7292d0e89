"""`segbench report` end to end on hand-built run directories (tests/report_fixtures.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from report_fixtures import SHAPE, ball, make_run_dir
from scipy import stats as scipy_stats

from segbench.cli import main
from segbench.errors import ConfigError, RunDirectoryError
from segbench.report import figures, tables, write_report

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def run_with_failures(tmp_path_factory) -> Path:
    """2 models × 5 folds × 20 cases; fcn fold 2 ran out of memory, unet fold 4 left no trace at all."""
    root = tmp_path_factory.mktemp("report")
    return make_run_dir(root, failed={("fcn", 2): ("oom", "CUDA out of memory at iteration 12")},
                        missing=[("unet", 4)])  # fmt: skip


@pytest.fixture(scope="module")
def report_dir(run_with_failures) -> Path:
    return write_report(run_with_failures).parent


def test_writes_every_output(report_dir):
    assert {p.name for p in report_dir.iterdir()} >= {"report.md", "report.html", "summary.csv", "figures"}
    names = {p.name for p in (report_dir / "figures").iterdir()}
    assert {"box_dice.png", "box_hd95_pen.png", "pareto_memory.png", "pareto_throughput.png",
            "learning_curves.png", "qualitative.png"} <= names  # fmt: skip
    for name in names:
        assert (report_dir / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_leaderboard_matches_direct_computation(run_with_failures, report_dir):
    metrics = pd.read_csv(run_with_failures / "metrics.csv")
    summary = pd.read_csv(report_dir / "summary.csv").set_index("model")
    assert list(summary.index) == ["unet", "fcn"]  # best mean Dice first
    for model, rows in metrics.groupby("model"):
        assert summary.loc[model, "cases"] == len(rows) == 16
        assert summary.loc[model, "dice_mean"] == pytest.approx(rows["dice"].mean(), rel=1e-5)
        assert summary.loc[model, "dice_sd"] == pytest.approx(rows["dice"].std(ddof=1), rel=1e-5)
        assert summary.loc[model, "dice_ci_low"] < summary.loc[model, "dice_mean"] < summary.loc[model, "dice_ci_high"]
        assert summary.loc[model, "hd95_median"] == pytest.approx(rows["hd95"].median(), rel=1e-5)
        penalised = rows["hd95"].where(np.isfinite(rows["hd95"]), rows["diagonal_mm"])
        assert summary.loc[model, "hd95_mean"] == pytest.approx(penalised.mean(), rel=1e-5)
        assert summary.loc[model, "misses"] == rows["miss"].sum()
    assert summary.loc["fcn", "misses"] == 1  # the empty prediction is counted, not dropped
    assert summary.loc["fcn", "tensor_peak_mb"] == 50 and summary.loc["fcn", "peak_rss_mb"] == 804
    assert summary.loc["fcn", "params"] == 120000 and summary.loc["unet", "jobs_done"] == 4


def test_memory_columns_say_what_they_measure_and_show_ranges(run_with_failures, report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    header = next(line for line in md.splitlines() if line.startswith("| model") and "params" in line)  # costs table
    assert "tensor peak (MiB)" in header and "RSS peak (MiB)" in header and "CUDA" not in header  # a CPU run
    fcn = " ".join(line for line in md.splitlines() if line.startswith("| fcn"))  # its quality and cost rows
    unet = " ".join(line for line in md.splitlines() if line.startswith("| unet"))
    assert "**50**" in fcn  # the lowest tensor peak is the best memory
    assert "120–150" in unet  # its jobs differ by more than 5 %: the cell shows the range
    assert "exact peak of live tensors" in md and "Dice vs peak tensor memory of a training step (MiB)" in md


def test_paired_statistics_match_scipy(run_with_failures, report_dir):
    metrics = pd.read_csv(run_with_failures / "metrics.csv")
    wide = metrics.pivot_table(index="case_id", columns="model", values="dice").dropna()
    direct = scipy_stats.wilcoxon(wide["unet"], wide["fcn"])
    diff = (wide["unet"] - wide["fcn"]).mean()
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    # One comparison per metric: Holm leaves the p-value unchanged.
    p_text = "p < 0.001" if direct.pvalue < 0.001 else f"p = {direct.pvalue:.3f}"
    sentence = re.search(
        r"unet beats fcn by ([0-9.]+) Dice \(difference of means; 95% CI [0-9.]+–[0-9.]+, (p [^,]+), (\d+) cases"
        r"; only the (\d+) cases both have \(unet has 16, fcn 16\)\)",
        md,
    )
    assert sentence, md
    assert float(sentence.group(1)) == pytest.approx(diff, abs=5e-4)
    assert sentence.group(2) == p_text and int(sentence.group(3)) == len(wide) == 12
    assert int(sentence.group(4)) == 12  # the common cases (the failed fold's cases are not compared)
    assert f"| Dice | unet | fcn | 12 | 0 | {diff:.3f} |" in md
    assert f"{direct.pvalue:.4f}" in md
    assert "Rank stability" in md


def test_failed_and_missing_jobs_are_shown(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    assert "| fcn | 2 | oom | CUDA out of memory at iteration 12 |" in md
    assert "| unet | 4 | missing |" in md
    assert "8 done, 2 not done" in md
    fold_rows = [line for line in md.splitlines() if line.startswith("| fcn | ") and "oom" in line]
    assert fold_rows, "the failed fold must appear in the per-fold table"
    assert any(line.startswith("| unet | ") and "| missing |" in line for line in md.splitlines())
    assert "| 4/5 |" in md  # fcn: 4 of 5 jobs done


def test_best_values_are_highlighted(report_dir):
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    unet = next(line for line in md.splitlines() if line.startswith("| unet (incomplete) | 16 |"))
    fcn = next(line for line in md.splitlines() if line.startswith("| fcn (incomplete) | 16 |"))
    # Each model lacks another fold's cases: their quality columns are never marked against each other ...
    assert "**" not in unet.split("|")[4] and "**" not in fcn.split("|")[4]
    fcn_costs = next(line for line in md.splitlines() if line.startswith("| fcn | **120,000** |"))  # costs table
    assert "**120,000**" in fcn_costs  # ... while costs are: fewest parameters
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert '<td class="best">120,000</td>' in html


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == len(list((report_dir / "figures").iterdir()))
    assert "<style>" in html and "<script" not in html
    assert not re.search(r"""(src|href)=["'](https?:|//|figures/)""", html)


def test_regenerating_gives_identical_files(run_with_failures, report_dir, tmp_path):
    write_report(run_with_failures, out_dir=tmp_path / "again")
    for name in ("summary.csv", "report.md", "report.html"):
        assert (tmp_path / "again" / name).read_bytes() == (report_dir / name).read_bytes(), name
    for png in (report_dir / "figures").iterdir():
        assert (tmp_path / "again" / "figures" / png.name).read_bytes() == png.read_bytes(), png.name


def test_user_strings_are_escaped(tmp_path):
    run = make_run_dir(tmp_path, models=("fcn", XSS), n_folds=2, cases=("la_003", XSS, "la_005", "la_006"),
                       dataset=False)  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["config"]["note"] = XSS
    (run / "manifest.json").write_text(json.dumps(manifest))
    jobs = pd.read_csv(run / "jobs.csv")
    jobs["reason"] = jobs["reason"].astype(object).fillna("")
    jobs.loc[0, ["status", "reason"]] = ["failed", XSS]
    jobs.to_csv(run / "jobs.csv", index=False)
    html = write_report(run).read_text(encoding="utf-8")
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    md = (run / "report" / "report.md").read_text(encoding="utf-8")
    # Fenced code (the config dump) is shown literally by every Markdown renderer; everything else is escaped.
    outside_code = re.sub(r"^(`{3,})\n.*?\n\1$", "", md, flags=re.S | re.M)
    assert "<script" not in outside_code and "&lt;script&gt;alert(1)&lt;/script&gt;" in outside_code
    assert outside_code.count("&lt;script&gt;") >= 3  # model name, case id, failure reason
    assert "Content-Security-Policy" in html


def _benchmark_json(path: Path) -> Path:
    def entry(name, median, **extra):
        return {"name": name, "stats": {"median": median, "mean": median}, "extra_info": extra}

    data = {"benchmarks": [
        entry("test_forward[unet]", 0.020, params=1_900_000, flops=4e9, flops_per_s=2e11),
        entry("test_train_step[unet]", 0.060, params=1_900_000, flops=1.2e10, flops_per_s=2e11),
        entry("test_forward[fcn]", 0.005, params=120_000, flops=1e9, flops_per_s=2e11),
        entry("test_other", 1.0),
    ]}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_cli_report_with_benchmarks_and_unreachable_dataset(tmp_path):
    run = make_run_dir(tmp_path, n_folds=2, cases=("la_003", "la_004", "la_005", "la_006"), dataset=False)
    bench = _benchmark_json(tmp_path / "bench.json")
    result = CliRunner().invoke(main, ["report", str(run), "--out", str(tmp_path / "out"), "--benchmarks", str(bench)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Speed (pytest-benchmark)" in md
    assert (
        "| model | params | forward median (ms) | forward GFLOP/s | train step median (ms) | train step GFLOP/s |" in md
    )
    assert "| fcn | 120,000 | **5.00** | **200.00** | – | – |" in md  # ties are all marked best
    assert "| unet | 1,900,000 | 20.00 | **200.00** | 60.00 | 200.00 |" in md
    # The dataset path in the manifest does not exist: no panel, a note, no crash.
    assert not (tmp_path / "out" / "figures" / "qualitative.png").exists()
    assert "Qualitative panel skipped" in md


def test_cli_errors_are_one_sentence(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "manifest.json not found" in result.output
    with pytest.raises(RunDirectoryError):
        write_report(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ConfigError, match="--benchmarks"):
        write_report(tmp_path, benchmark_json=bad)


def test_per_case_table_averages_labels_and_flags_misses():
    metrics = pd.DataFrame({
        "model": ["m"] * 3, "fold": [0] * 3, "case_id": ["a", "a", "b"], "label": [1, 2, 1],
        "dice": [0.8, 0.0, 0.9], "hd95": [2.0, math.inf, 1.0], "assd": [1.0, math.inf, 0.5],
        "nsd": [0.9, 0.0, 1.0], "miss": [False, True, False], "diagonal_mm": [100.0, 100.0, 100.0],
    })  # fmt: skip
    per_case = tables.per_case_table(metrics).set_index("case_id")
    assert per_case.loc["a", "dice"] == pytest.approx(0.4)
    assert per_case.loc["a", "hd95"] == math.inf and per_case.loc["a", "hd95_pen"] == pytest.approx(51.0)
    assert per_case.loc["a", "miss"] and not per_case.loc["b", "miss"]
    assert per_case.loc["a", "labels"] == 2


def test_fold_table_mean_of_folds_differs_from_pooled_mean():
    per_case = pd.DataFrame({"model": ["m"] * 3, "fold": [0, 0, 1], "case_id": ["a", "b", "c"],
                             "dice": [0.6, 0.8, 1.0]})  # fmt: skip
    table = tables.fold_table(per_case, models=["m", "absent"], n_folds=3, metric="dice")
    assert table.loc["m", "fold_0"] == pytest.approx(0.7) and math.isnan(table.loc["m", "fold_2"])
    assert table.loc["m", "mean_of_folds"] == pytest.approx(0.85)
    assert table.loc["m", "pooled"] == pytest.approx(0.8)
    assert math.isnan(table.loc["absent", "pooled"])  # an expected model without results keeps its row


def test_qualitative_panel_from_nifti_files(tmp_path):
    paths = {}
    for name, array in {"ref": ball(), "unet": ball(1), "empty": np.zeros(SHAPE, np.uint8)}.items():
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(paths[name]))
    ref = np.asarray(nib.load(str(paths["ref"])).dataobj)
    preds = {m: np.asarray(nib.load(str(paths[m])).dataobj) for m in ("unet", "empty")}
    assert figures.slice_axis((1.25, 1.25, 1.5)) == 2 and figures.slice_axis((1.0, 1.0, 1.0)) == 2
    assert figures.middle_slice(ref, 2) == 7
    png = figures.qualitative_panel(ref.astype(np.float32), ref, preds, spacing=(1.0, 1.0, 1.0), title="case $x$",
                                    models=["unet", "empty"])  # fmt: skip
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="shape"):
        figures.qualitative_panel(ref, ref, {"bad": ref[:8]}, spacing=(1, 1, 1), title="t", models=["bad"])
