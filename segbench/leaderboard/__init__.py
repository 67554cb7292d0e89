"""`segbench leaderboard`: runs of several datasets ranked the way biomedical challenges rank (docs/leaderboard.md).

Entry point :func:`write_leaderboard`. It reads the runs (:mod:`.runs`, through the run report's own tables and
verdicts), ranks the models across datasets (:mod:`.ranking`: rank-then-aggregate, aggregate-then-rank,
test-then-rank and their consensus), measures rank stability by a paired case bootstrap (:mod:`.bootstrap`), runs a
Friedman test with Nemenyi's post-hoc test (:mod:`.friedman`), flags runs that are not comparable
(:mod:`.comparability`) and writes::

    OUT/
      leaderboard.md      Markdown, figures linked from figures/
      leaderboard.html    one self-contained page (inline CSS, base64 figures, no scripts, no external links)
      rankings.csv, per_dataset.csv, rank_stability.csv, rank_frequencies.csv, comparability.csv, friedman.csv,
      nemenyi.csv (when the Friedman test ran)
      figures/*.png

Each ranked run records the page in ``RUN_DIR/leaderboards.json`` and its report (``RUN_DIR/report``) is rendered
again, so it links the leaderboard at once. Everything is seeded: the same runs give identical files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from segbench.atomic import atomic_write_bytes, atomic_write_text
from segbench.errors import SegbenchError
from segbench.leaderboard.bootstrap import DEFAULT_RESAMPLES
from segbench.leaderboard.build import Leaderboard, build_leaderboard
from segbench.leaderboard.exports import csv_tables
from segbench.leaderboard.page import consensus_line, figure_blocks, leaderboard_report, title_of
from segbench.report.leaderboard_links import register_leaderboard
from segbench.report.render import render_html, render_markdown

__all__ = ["Leaderboard", "LeaderboardFiles", "build_leaderboard", "consensus_line", "default_out_dir",
           "write_leaderboard"]  # fmt: skip

log = logging.getLogger(__name__)

HTML_FILE = "leaderboard.html"
MARKDOWN_FILE = "leaderboard.md"


@dataclass(frozen=True)
class LeaderboardFiles:
    """What :func:`write_leaderboard` wrote: the folder, the page, the leaderboard itself and the refreshed reports
    (with the runs whose report could not be refreshed, and why)."""

    out_dir: Path
    html: Path
    board: Leaderboard
    reports: tuple[Path, ...]
    problems: tuple[str, ...]


def default_out_dir(now: float | None = None) -> Path:
    """``./leaderboard-<YYYYmmdd-HHMMSS>`` in the current folder (local time)."""
    return Path.cwd() / f"leaderboard-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def _write_page(board: Leaderboard, out: Path) -> Path:
    report = leaderboard_report(board)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for block in figure_blocks(report):
        atomic_write_bytes(out / "figures" / block.name, block.png)
    for name, table in csv_tables(board).items():
        atomic_write_text(out / name, table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out / MARKDOWN_FILE, render_markdown(report))
    return atomic_write_text(out / HTML_FILE, render_html(report))


def _link_runs(board: Leaderboard, html: Path) -> tuple[list[Path], list[str]]:
    """Record the page in each run's leaderboards.json and render its report again; problems never abort."""
    from segbench.report import write_report

    reports, problems = [], []
    for run in board.runs:
        try:
            register_leaderboard(run.run_dir, html, title=title_of(board))
            reports.append(write_report(run.run_dir))  # the report's own defaults, as `segbench report RUN_DIR`
        except (OSError, SegbenchError) as exc:
            problems.append(f"{run.run_dir}: its report could not link the leaderboard ({exc})")
            log.warning(problems[-1])
    return reports, problems


def write_leaderboard(
    run_dirs: list[str | Path],
    *,
    out_dir: str | Path | None = None,
    metric: str = "dice",
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
    link_runs: bool = True,
) -> LeaderboardFiles:
    """Rank the runs' models across their datasets and write the leaderboard folder.

    Args:
        run_dirs: one run directory per dataset (finished or partial).
        out_dir: output folder (created); default :func:`default_out_dir`.
        metric: the catalogue metric the rankings use (``dice``, ``hd95``, ``nsd``, ``assd`` …).
        seed: seed of every bootstrap.
        n_resamples: case-bootstrap draws per dataset for the rank stability.
        link_runs: record the page in each run's ``leaderboards.json`` and re-render its report.

    Raises:
        ConfigError: an unknown metric, no run, a folder given twice or two runs of one dataset.
        RunDirectoryError: a folder without a readable manifest.json.
        OSError: the leaderboard folder could not be written (nothing half-written is left).
    """
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    board = replace(build_leaderboard(run_dirs, metric=metric, seed=seed, n_resamples=n_resamples), home=out)
    html = _write_page(board, out)
    log.info("leaderboard written to %s", out)
    reports, problems = _link_runs(board, html) if link_runs else ([], [])
    return LeaderboardFiles(out, html, board, tuple(reports), tuple(problems))
