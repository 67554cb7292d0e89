"""`segbench data check DATA` (preflight) and `segbench data synth OUT [--task NAME]` (embedded synthetic tasks)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from segbench.cli.group import main


@main.group()
def data() -> None:
    """Check a dataset folder or generate a synthetic one."""


@data.command()
@click.argument("data_dir", metavar="DATA", type=click.Path(path_type=Path))
def check(data_dir: Path) -> None:
    """Preflight: read every file of DATA fully.

    DATA is an MSD task or nnU-Net v2 raw folder. Prints a summary and exits 0, or exits 1 listing every
    problem with the file at fault.
    """
    from segbench.data.validate import validate_dataset

    report = validate_dataset(data_dir, progress=True)
    if report.summary is not None:
        click.echo(format_summary(report.summary))
    for warning in report.warnings:
        click.echo(f"warning: {warning}")
    if report.ok:
        click.echo(f"ok: {data_dir} passed all checks ({report.summary['files_read']} files read fully)")
        return
    click.echo(f"{len(report.problems)} problem(s) in {data_dir}:")
    for problem in report.problems:
        click.echo(f"  - {problem}")
    sys.exit(1)


# Kept equal to segbench.data.synth.MIN_SIDE / DEFAULT_SHAPE and to the tasks' names and default shapes in
# segbench.data.synth_tasks.TASKS (a test checks), so --help stays fast (no numpy import).
SYNTH_MIN_SIDE = 8
SYNTH_DEFAULT_SHAPE = (48, 48, 32)
SYNTH_TASKS = {
    "heart": ((48, 48, 32), "Task02-like left-atrium MRI (the default dataset of segbench run)"),
    "ct_lesion": ((56, 56, 24), "anisotropic CT crop, labels organ and lesion; 3 of 10 cases have no lesion"),
    "thin": ((48, 48, 32), "branching vessel-like tubes 1-3 voxels across"),
}


def _tasks_help() -> str:
    return "; ".join(f"{name}: {text}" for name, (_, text) in SYNTH_TASKS.items())


@data.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--task",
    type=click.Choice(list(SYNTH_TASKS)),
    default="heart",
    show_default=True,
    help=f"The embedded task (docs/tasks.md). {_tasks_help()}.",
)
@click.option("--cases", default=20, show_default=True, type=click.IntRange(min=1), help="Labelled training cases.")
@click.option("--test-cases", default=10, show_default=True, type=click.IntRange(min=0), help="Unlabelled test cases.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same files).")
@click.option(
    "--shape",
    nargs=3,
    type=click.IntRange(min=SYNTH_MIN_SIDE),
    default=None,
    metavar="D H W",
    help=f"Volume size in voxels, each side at least {SYNTH_MIN_SIDE} [default: the task's, "
    + ", ".join(f"{name} {' '.join(map(str, shape))}" for name, (shape, _) in SYNTH_TASKS.items())
    + "].",
)
@click.option(
    "--test-labels", is_flag=True, help="Also write the test cases' labels to labelsTs/ (a labelled held-back set)."
)
@click.option("--force", is_flag=True, help="Replace OUT if it already holds files (everything in it is deleted).")
def synth(
    out: Path,
    task: str,
    cases: int,
    test_cases: int,
    seed: int,
    shape: tuple[int, int, int] | None,
    test_labels: bool,
    force: bool,
) -> None:
    """Write a deterministic synthetic MSD dataset of an embedded task to OUT (a new or empty folder)."""
    import shutil

    from segbench.data.synth import check_shape, make_synthetic_task
    from segbench.errors import ConfigError

    if shape is not None:
        check_shape(shape)  # before OUT is touched
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(
                f"{out} is not empty; a synthetic dataset needs a new or empty folder (pass --force to replace it)"
            )
        if out.resolve() in (Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve()):
            raise ConfigError(f"--force would delete {out}, which holds the current or home folder; choose another OUT")
        shutil.rmtree(out)
    where = make_synthetic_task(
        out,
        task=task,
        cases=cases,
        test_cases=test_cases,
        seed=seed,
        shape=tuple(shape) if shape else None,
        test_labels=test_labels,
    )
    click.echo(
        f"wrote {cases} training and {test_cases} test cases of task {task} to {where}; check them with: "
        f"segbench data check {where}"
    )


def format_summary(summary: dict) -> str:
    """A few aligned lines describing the dataset (names, counts, shape/spacing/foreground ranges)."""
    rows = [
        ("dataset", f"{summary['name']} ({summary['format']}) at {summary['root']}"),
        ("cases", f"{summary['training_cases']} training, {summary['test_cases']} test"),
        ("channels", ", ".join(f"{i}: {name}" for i, name in enumerate(summary["channels"]))),
        ("labels", ", ".join(f"{value}: {name}" for value, name in summary["labels"].items())),
    ]
    if summary["shape_min"] is not None:
        rows.append(("shape", _range(summary["shape_min"], summary["shape_max"], "{:d}") + " voxels (D×H×W)"))
        rows.append(("spacing", _range(summary["spacing_min"], summary["spacing_max"], "{:.4g}") + " mm"))
    for name, stats in summary["foreground_ml"].items():
        rows.append(
            (
                "foreground",
                f"{name}: {stats['min']:.3g} – {stats['max']:.3g} ml (median {stats['median']:.3g})",
            )
        )
    rows.append(("read", f"{summary['files_read']} files, {summary['bytes_read'] / 1e6:.1f} MB"))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _range(low: list, high: list, fmt: str) -> str:
    lo = "×".join(fmt.format(v) for v in low)
    hi = "×".join(fmt.format(v) for v in high)
    return lo if lo == hi else f"{lo} … {hi}"
