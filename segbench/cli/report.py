"""`segbench report RUN_DIR [--out REPORT_DIR] [--benchmarks FILE.json]`."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default RUN_DIR/report).",
)
@click.option(
    "--benchmarks",
    "benchmark_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="pytest-benchmark JSON (--benchmark-json) to add as a speed table.",
)
def report(run_dir: Path, out_dir: Path | None, benchmark_json: Path | None) -> None:
    """Write report.md, a self-contained report.html, summary.csv and figures/ for RUN_DIR."""
    from segbench.report import write_report

    html_path = write_report(run_dir, out_dir=out_dir, benchmark_json=benchmark_json)
    click.echo(f"report written: {html_path} (and report.md, summary.csv, figures/ next to it)")
