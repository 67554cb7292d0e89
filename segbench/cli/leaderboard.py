"""`segbench leaderboard RUN_DIR… [--metric dice] [--out DIR] [--resamples N] [--seed S] [--no-link]`."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main
from segbench.rundir import LEADERBOARDS_FILE


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--metric",
    default="dice",
    show_default=True,
    help="Metric the rankings use (dice, nsd: higher is better; hd95, assd, hd: lower is better).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default ./leaderboard-<date>-<time>).",
)
@click.option(
    "--resamples",
    default=1000,
    show_default=True,
    type=click.IntRange(min=10),
    help="Case-bootstrap draws per dataset for the rank stability.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of every bootstrap.")
@click.option(
    "--no-link",
    is_flag=True,
    help=f"Do not record the leaderboard in the runs ({LEADERBOARDS_FILE}) nor re-render their reports.",
)
def leaderboard(run_dirs: tuple[Path, ...], metric: str, out_dir: Path | None, resamples: int, seed: int,
                no_link: bool) -> None:  # fmt: skip
    """Rank the models of several runs (one per dataset) across the datasets: rank-then-aggregate,
    aggregate-then-rank, test-then-rank and their consensus, bootstrap rank stability, a Friedman test with a
    Nemenyi diagram, and the runs' comparability. Writes leaderboard.md, a self-contained leaderboard.html, CSV
    files and figures/; each run's report then links the leaderboard."""
    from segbench.leaderboard import consensus_line, write_leaderboard

    files = write_leaderboard(list(run_dirs), out_dir=out_dir, metric=metric, seed=seed, n_resamples=resamples,
                              link_runs=not no_link)  # fmt: skip
    board = files.board
    click.echo(f"leaderboard written: {files.out_dir} ({files.html.name}, leaderboard.md, CSV files, figures/)")
    click.echo(f"consensus ranking by {board.metric.label} over {len(board.runs)} datasets: {consensus_line(board)}")
    for note in _notes(board):
        click.echo(note)
    for problem in files.problems:
        click.echo(f"warning: {problem}", err=True)
    if files.reports:
        click.echo(f"linked from {len(files.reports)} run report(s): " + ", ".join(str(p) for p in files.reports))


def _notes(board) -> list[str]:
    """The dagger footnote, the Friedman caveat or why it could not run, and the comparability warning."""
    from segbench.leaderboard.tables import dagger_note

    notes = [dagger_note(board)] if board.missing else []
    friedman = board.friedman
    notes.append(friedman.caveat if friedman.ran and friedman.caveat else friedman.reason)
    if not board.comparability.comparable:
        notes += [f"not comparable: {line}" for line in board.comparability.sentences()]
    return [n for n in notes if n]
