"""What `segbench leaderboard` writes: the self-contained page, the CSV files, the runs' links and the CLI.

Three hand-built runs (tests/leaderboard_fixtures.py): model d is missing from dataset C, and C trained twice as long
on another precision, so the dagger, the comparability section and the Friedman caveat (3 datasets) all show.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from leaderboard_fixtures import write_run

from segbench import rundir
from segbench.leaderboard import write_leaderboard
from segbench.report import write_report

SEGBENCH = Path(sys.executable).parent / "segbench"  # next to the interpreter, not on PATH
needs_posthocs = pytest.mark.skipif(
    importlib.util.find_spec("scikit_posthocs") is None,
    reason="scikit-posthocs is not installed (pip install 'segbench[leaderboard]')",
)
VALUES = {
    "A": {"a": 0.90, "b": 0.80, "c": 0.80, "d": 0.70},
    "B": {"a": 0.70, "b": 0.85, "c": 0.60, "d": 0.75},
    "C": {"a": 0.88, "b": 0.86, "c": 0.90},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [write_run(root, name, values, **({"iterations": 200, "precision": "bf16"} if name == "C" else {}))
            for name, values in VALUES.items()]  # fmt: skip


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    return write_leaderboard(runs, out_dir=tmp_path_factory.mktemp("out") / "board", n_resamples=50)


def test_every_file_is_written(written, runs):
    names = {p.name for p in written.out_dir.iterdir()}
    assert {"leaderboard.md", "leaderboard.html", "rankings.csv", "per_dataset.csv", "rank_stability.csv",
            "rank_frequencies.csv", "comparability.csv", "friedman.csv", "figures"} <= names  # fmt: skip
    assert (written.out_dir / "figures" / "rank_stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rankings = pd.read_csv(written.out_dir / "rankings.csv")
    assert rankings["model"].tolist() == ["a", "b", "c", "d"]
    assert rankings.set_index("model").loc["d", "missing_from"] == "C"
    per_dataset = pd.read_csv(written.out_dir / "per_dataset.csv")
    assert len(per_dataset) == 11 and set(per_dataset["dataset"]) == {"A", "B", "C"}
    best_of_b = per_dataset[(per_dataset["dataset"] == "B") & (per_dataset["model"] == "b")].iloc[0]
    assert best_of_b["verdict_dice"] == "reference" and best_of_b["rank"] == 1
    # A significant verdict names its direction from the row's side, never a bare "beats" in the loser's row.
    verdicts = set(per_dataset["verdict_dice"].dropna()) | set(per_dataset["verdict_hd95"].dropna())
    assert "beats" not in verdicts
    assert any(v.startswith(("beaten by ", "beats ")) for v in verdicts), verdicts
    # Runs are named relative to the leaderboard's folder: a committed page shows no machine's folders.
    places = pd.read_csv(written.out_dir / "comparability.csv").set_index("dataset")["run_dir"]
    assert all(not Path(p).is_absolute() for p in places)
    assert [(written.out_dir / places[run.name]).resolve() for run in runs] == [run.resolve() for run in runs]


def test_the_html_page_is_self_contained(written):
    page = written.html.read_text(encoding="utf-8")
    assert "<script" not in page
    assert 'http-equiv="Content-Security-Policy"' in page
    sources = re.findall(r'\b(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources


def test_the_page_marks_the_missing_model_and_flags_the_differences(written):
    text = (written.out_dir / "leaderboard.md").read_text(encoding="utf-8")
    assert "Consensus ranking: 1 a, 2 b, 3 c, 4 d †" in text
    assert "† Not evaluated on every dataset (d lacks C)" in text
    assert "| d † | not in this run |" in text  # dataset C's table
    assert "budget differs: A 100 iterations; B 100 iterations; C 200 iterations" in text
    assert "precision differs" in text and "hardware differs" not in text


@needs_posthocs
def test_friedman_and_nemenyi_with_the_small_sample_caveat(written):
    text = (written.out_dir / "leaderboard.md").read_text(encoding="utf-8")
    assert "Caveat (scipy.stats.friedmanchisquare)" in text and "With 3 datasets" in text
    assert "Left out (missing from a dataset): d." in text
    assert (written.out_dir / "figures" / "critical_difference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written.html.read_text(encoding="utf-8").count("data:image/png;base64,") == 2
    nemenyi = pd.read_csv(written.out_dir / "nemenyi.csv").set_index("model")
    assert list(nemenyi.index) == list(nemenyi.columns) == ["a", "b", "c"]
    assert (nemenyi.to_numpy() == nemenyi.to_numpy().T).all()
    friedman = pd.read_csv(written.out_dir / "friedman.csv").iloc[0]
    assert friedman["ran"] and friedman["datasets"] == 3 and friedman["models"] == "a b c"


def test_each_run_report_links_the_leaderboard(written, runs):
    assert len(written.reports) == 3 and not written.problems
    for run in runs:
        record = json.loads(rundir.leaderboards_path(run).read_text(encoding="utf-8"))
        assert [(run / e["path"]).resolve() for e in record["leaderboards"]] == [written.html.resolve()]
        report = rundir.report_dir(run) / "report.html"
        hrefs = re.findall(r'<a href="([^"]+)"', report.read_text(encoding="utf-8"))
        assert len(hrefs) == 1 and (report.parent / hrefs[0]).resolve() == written.html.resolve()
        assert "Part of leaderboard: [" in (report.parent / "report.md").read_text(encoding="utf-8")


def test_a_second_leaderboard_adds_a_link_and_a_removed_one_disappears(runs, written, tmp_path):
    second = write_leaderboard(runs[:2], out_dir=tmp_path / "two", n_resamples=10)
    record = json.loads(rundir.leaderboards_path(runs[0]).read_text(encoding="utf-8"))
    assert len(record["leaderboards"]) == 2
    second.html.unlink()
    write_report(runs[0])
    page = (rundir.report_dir(runs[0]) / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r"<a href=", page)) == 1  # only the first leaderboard's page still exists


def test_the_same_runs_give_identical_files(runs, tmp_path):
    one = write_leaderboard(runs, out_dir=tmp_path / "one", n_resamples=30, link_runs=False)
    two = write_leaderboard(list(reversed(runs)), out_dir=tmp_path / "two", n_resamples=30, link_runs=False)
    for name in ("leaderboard.md", "rankings.csv", "rank_frequencies.csv", "figures/rank_stability.png"):
        assert (one.out_dir / name).read_bytes() == (two.out_dir / name).read_bytes(), name


def _segbench(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(SEGBENCH), "leaderboard", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)  # fmt: skip


def test_cli_prints_the_folder_and_the_consensus(runs, tmp_path):
    done = _segbench(*runs, "--resamples", 20, "--no-link", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folder = re.search(r"leaderboard written: (\S+)", done.stdout).group(1)
    assert Path(folder).parent == tmp_path and Path(folder).name.startswith("leaderboard-")
    assert "consensus ranking by Dice over 3 datasets: 1 a, 2 b, 3 c, 4 d †" in done.stdout
    assert "Caveat (scipy.stats.friedmanchisquare)" in done.stdout or "need scikit-posthocs" in done.stdout
    assert "not comparable: budget differs" in done.stdout


def test_cli_refuses_two_runs_of_one_dataset(tmp_path):
    from click.testing import CliRunner

    from segbench.cli import main

    one = write_run(tmp_path / "x", "Heart", {"a": 0.8, "b": 0.7})
    two = write_run(tmp_path / "y", "Heart", {"a": 0.8, "b": 0.7})
    done = CliRunner().invoke(main, ["leaderboard", str(one), str(two), "--out", str(tmp_path / "board")])
    assert done.exit_code == 1
    assert done.output.startswith("error: ") and str(one) in done.output and str(two) in done.output
    assert "Traceback" not in done.output and not (tmp_path / "board").exists()
