"""`segbench ensemble RUN_DIR --models a,b [--name NAME]`: an ensemble of the run's models as a row of its report."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--models", "models", required=True, help="Comma-separated models of the run to ensemble, e.g. fcn,unet.")
@click.option("--name", default=None, help="The row's name. Default: the models joined by '+', e.g. fcn+unet.")
@click.option("--no-report", is_flag=True, help="Do not rewrite RUN_DIR/report afterwards.")
def ensemble(run_dir: Path, models: str, name: str | None, no_report: bool) -> None:
    """Average the models' out-of-fold class probabilities per case (the run needs --save-probabilities), score the
    ensemble with the run's metrics and postprocessing rule, and add it to the report as a row."""
    from segbench import rundir
    from segbench.extra_models import add_ensemble

    row = add_ensemble(run_dir, models.split(","), name=name)
    click.echo(f"ensemble {row.name}: {len(row.cases)} cases scored, postprocessing: {row.decision.describe()} "
               f"(stored in {rundir.extra_model_dir(run_dir, row.name)})")  # fmt: skip
    if not no_report:
        from segbench.report import write_report

        click.echo(f"report written: {write_report(run_dir)}")
