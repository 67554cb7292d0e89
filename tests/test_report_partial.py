"""A report renders for any run, however partial: random mixes of job statuses on hand-built run directories."""

from __future__ import annotations

import html
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from report_fixtures import CASES, job_row, make_run_dir

from segbench import results, rundir
from segbench.report import write_report

MODELS = ("fcn", "unet", "unet_w8_d2")
N_FOLDS = 2
STATUSES = ("done", "failed", "diverged", "oom", "killed", "timeout", "missing")
REASON = {status: f"{status} because of reason <{status}>" for status in STATUSES}

grids = st.integers(min_value=1, max_value=len(MODELS)).flatmap(
    lambda n: st.tuples(
        st.just(MODELS[:n]),
        st.lists(st.sampled_from(STATUSES), min_size=n * N_FOLDS, max_size=n * N_FOLDS),
        st.sampled_from(("omitted", "listed", "no tables")),  # how missing jobs appear in jobs.csv
    )
)


def _build(root: Path, models: tuple[str, ...], statuses: list[str], tables: str) -> dict[tuple[str, int], str]:
    jobs = {(m, f): statuses[i * N_FOLDS + f] for i, m in enumerate(models) for f in range(N_FOLDS)}
    failed = {key: (s, REASON[s]) for key, s in jobs.items() if s not in ("done", "missing")}
    missing = [key for key, s in jobs.items() if s == "missing"]
    run = make_run_dir(root, models=models, n_folds=N_FOLDS, cases=CASES[:6], failed=failed, missing=missing,
                       dataset=False)  # fmt: skip
    if tables == "listed":  # jobs.csv as rebuild_tables writes it: missing jobs have a row
        try:
            frame = pd.read_csv(run / "jobs.csv")
        except pd.errors.EmptyDataError:  # every job missing: make_run_dir wrote a jobs.csv without columns
            frame = pd.DataFrame()
        extra = pd.DataFrame([{"model": m, "fold": f, "status": "missing", "reason": REASON["missing"]}
                              for m, f in missing])  # fmt: skip
        pd.concat([frame, extra], ignore_index=True).to_csv(run / "jobs.csv", index=False)
    elif tables == "no tables":  # tables lost; job folders hold no result.json, so every job is missing
        (run / "jobs.csv").unlink()
        (run / "metrics.csv").unlink()
        jobs = dict.fromkeys(jobs, "missing")
    return jobs


def _cells(page: str, table_after: str) -> list[list[str]]:
    """Rows of the first table after the heading ``table_after`` (HTML cells, unescaped)."""
    section = page.split(f"<h2>{table_after}</h2>", 1)[1].split("</section>", 1)[0].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, flags=re.S)
    return [[html.unescape(re.sub("<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows]


# Each example writes a whole report (figures included, about a second): few examples, and no shrinking, which would
# rerun dozens of reports; a failure prints its grid, small by construction.
@settings(max_examples=12, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(grid=grids)
@pytest.mark.slow
def test_report_renders_for_any_mix_of_statuses(grid):
    models, statuses, tables = grid
    root = Path(tempfile.mkdtemp(prefix="partial-"))
    try:
        jobs = _build(root, models, statuses, tables)
        page = write_report(root / "run").read_text(encoding="utf-8")
    finally:
        report = (root / "run" / "report" / "report.md").read_text(encoding="utf-8") if (root / "run").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "Traceback" not in page and "nan" not in re.sub("<[^>]+>", " ", page).split()
    board = {row[0].removesuffix(" (incomplete)"): row for row in _cells(page, "Leaderboard") if row}
    for model in models:  # every model has a leaderboard row, even one without a finished job
        done = sum(jobs[(model, f)] == "done" for f in range(N_FOLDS))
        assert board[model][2] == f"{done}/{N_FOLDS}" or (tables == "no tables" and board[model][2].startswith("0/"))
        if done == 0:
            assert set(board[model][3:]) == {"–"}
    not_done = {(m, f): s for (m, f), s in jobs.items() if s != "done"}
    listed = {(row[0], int(row[1])): row for row in _cells(page, "Jobs") if len(row) == 4}
    assert set(listed) == set(not_done)  # the Jobs section names every job that is not done ...
    for key, status in not_done.items():
        assert listed[key][2] == status  # ... with its status ...
        assert listed[key][3]  # ... and why
    if not not_done:
        assert f"All {len(jobs)} jobs done" in page
    assert "## Jobs" in report


def test_rebuild_tables_lists_every_expected_job_missing_or_not(tmp_path):
    run = make_run_dir(tmp_path, models=("fcn", "unet"), n_folds=2, cases=CASES[:6], dataset=False)
    job = rundir.JobKey("unet", 1)
    results.write_job_result(run, results.JobResult("fcn", 0, "done", "", job_row("fcn", 0), []))
    results.write_job_result(run, results.JobResult("unet", 0, "timeout", "too slow", {}, []))
    (rundir.job_dir(run, job) / rundir.CHECKPOINT_LATEST).write_bytes(b"x")  # unet fold 1 stopped mid-training
    shutil.rmtree(rundir.job_dir(run, rundir.JobKey("fcn", 1)))  # fcn fold 1 never started
    results.rebuild_tables(run)
    jobs = results.load_jobs(run).set_index(["model", "fold"])
    assert len(jobs) == 4
    assert jobs.loc[("fcn", 0), "status"] == "done" and jobs.loc[("unet", 0), "status"] == "timeout"
    assert jobs.loc[("fcn", 1), "status"] == "missing" and "never started" in jobs.loc[("fcn", 1), "reason"]
    assert jobs.loc[("unet", 1), "status"] == "missing" and "checkpoint" in jobs.loc[("unet", 1), "reason"]
    assert "missing" not in results.JOB_STATUSES  # never written to a result.json
    with pytest.raises(ValueError, match="unknown job status"):
        results.write_job_result(run, results.JobResult("fcn", 1, "missing", "", {}, []))
    write_report(run)  # and the report of that run renders


def test_report_of_a_run_with_no_finished_job_and_empty_tables(tmp_path):
    killed = {(m, f): ("killed", "interrupted (Ctrl-C)") for m in ("fcn", "unet") for f in (0, 1)}
    run = make_run_dir(tmp_path, models=("fcn", "unet"), n_folds=2, cases=CASES[:6], dataset=False, failed=killed)
    (run / "metrics.csv").write_text("")
    page = write_report(run).read_text(encoding="utf-8")
    assert "0 done, 4 not done (4 killed)" in page
    assert "Paired statistics need at least two models" in page


def test_committed_example_report_holds_no_machine_paths():
    example = Path(__file__).parents[1] / "reports" / "example"
    for name in ("report.md", "report.html", "summary.csv"):
        text = (example / name).read_text(encoding="utf-8")
        assert "/tmp/" not in text and "/home/" not in text and "/root/" not in text, name
        assert "command: –" not in text


def test_provenance_shows_the_command_and_no_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    run = make_run_dir(tmp_path, models=("fcn",), n_folds=2, cases=CASES[:4], dataset=True)
    page = write_report(run).read_text(encoding="utf-8")
    assert "command: segbench run --folds 2" in page
    assert "at ~/data," in page and str(tmp_path) not in page.split("Provenance")[1].split("Environment")[0]


@pytest.mark.parametrize("width", [4.0, 6.0])
def test_long_plot_titles_are_wrapped_inside_the_figure(width):
    from matplotlib.figure import Figure

    from segbench.report.figures import set_title

    figure = Figure(figsize=(width, 4), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    models = ", ".join(f"unet_w{w}_d4_instance_norm" for w in (8, 16))
    set_title(ax, f"HD95 (mm, misses = diagonal) per case of {models}")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # what savefig(format="png") draws with, constrained layout included
    canvas.draw()
    title = ax.title.get_window_extent(renderer=canvas.get_renderer())
    assert title.x0 >= 0 and title.x1 <= width * 100 and title.y1 <= 400, (title, width)
