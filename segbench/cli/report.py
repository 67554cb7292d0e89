"""`segbench report RUN_DIR [--add NAME=PRED_DIR]… [--out REPORT_DIR] [--benchmarks FILE.json]`."""

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
    "--add",
    "added",
    multiple=True,
    metavar="NAME=PRED_DIR",
    help="Add predictions made elsewhere for the run's cases as an external row NAME (repeatable): an nnU-Net "
    "crossval_results_folds_* or cv_niftis folder, or a MONAI bundle's output (<case>/<case>_seg.nii.gz). Stored in "
    "RUN_DIR, so later reports keep the row.",
)
@click.option(
    "--benchmarks",
    "benchmark_json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="pytest-benchmark JSON (--benchmark-json) to add as a speed table.",
)
def report(run_dir: Path, added: tuple[str, ...], out_dir: Path | None, benchmark_json: Path | None) -> None:
    """Write report.md, a self-contained report.html, summary.csv and figures/ for RUN_DIR."""
    from segbench.extra_models import add_external
    from segbench.report import write_report

    for name, folder in [_name_and_folder(text) for text in added]:  # every --add checked before the first is scored
        row = add_external(run_dir, name, folder)
        click.echo(f"added {row.describe()}; {len(row.cases)} cases scored")

    html_path = write_report(run_dir, out_dir=out_dir, benchmark_json=benchmark_json)
    click.echo(f"report written: {html_path} (and report.md, summary.csv, figures/ next to it)")


def _name_and_folder(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise click.BadParameter(f"{text!r} is not NAME=PRED_DIR (e.g. nnunet=/data/crossval_results_folds_0_1_2_3_4)",
                                 param_hint="--add")  # fmt: skip
    return name.strip(), Path(folder.strip())
