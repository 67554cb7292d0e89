"""``segbench run``: train and evaluate every model on the same folds, then tables and a report."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main


def _interrupt_on_sigterm() -> None:
    # Slurm and `kill` send SIGTERM: treat it like Ctrl-C. A training job saves a checkpoint at its next step and
    # records `killed`; finished results stay as they are.
    from segbench.stop import install_interrupt_handlers

    install_interrupt_handlers()


@main.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="MSD or nnU-Net raw dataset folder. Default: the embedded synthetic Task02-like dataset.",
)
@click.option(
    "--models",
    default="fcn,unet",
    show_default=True,
    help="Comma-separated model names or wildcards (see `segbench models`).",
)
@click.option("--folds", type=int, default=5, show_default=True, help="Number of cross-validation folds.")
@click.option(
    "--splits",
    default="kfold",
    show_default=True,
    help="kfold (seeded), nnunet (nnU-Net's folds) or a splits_final.json file.",
)
@click.option(
    "--match",
    type=click.Choice(["flops", "params", "memory"]),
    default=None,
    help="Scale every family member (e.g. unet_w20_d4) to the width whose training FLOPs per voxel, parameters or "
    "peak tensor memory is closest to --match-to's; fixed models (fcn, unet) run as they are.",
)
@click.option("--match-to", default=None, metavar="MODEL", help="Reference model of --match (any model name).")
@click.option("--iterations", type=int, default=None, help="Training iterations per job (same for every model).")
@click.option(
    "--time-budget",
    "time_budget",
    type=float,
    default=None,
    help="Training seconds per job instead of an iteration budget.",
)
@click.option("--patch", nargs=3, type=int, default=None, metavar="D H W", help="Training / inference patch size.")
@click.option("--batch-size", type=int, default=None, help="Patches per training step.")
@click.option("--lr", type=float, default=None, help="Initial learning rate.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default=None, help="Optimiser (poly LR decay).")
@click.option(
    "--target-spacing",
    nargs=3,
    type=float,
    default=None,
    metavar="SD SH SW",
    help="Resample to this spacing in mm (predictions are resampled back).",
)
@click.option("--mirror/--no-mirror", default=None, help="Mirroring test-time augmentation.")
@click.option("--overlap", type=float, default=None, help="Sliding-window overlap in [0, 1).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--job-timeout", type=float, default=None, help="Wall-clock limit per job in seconds (status timeout).")
@click.option("--num-workers", type=int, default=None, help="Data-loader worker processes per job.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory. Default: ./segbench-runs/run-<date>-<time>.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out (finished jobs are kept as they are).")
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: this machine, each job in a fresh process (one per GPU at a time); slurm: one Slurm job per job.",
)
@click.option(
    "--in-process",
    is_flag=True,
    help="local: run every job inside this process (debugging); job figures then depend on the jobs before it.",
)
@click.option("--gpus", default=None, help="local: GPU ids to use, one job each at a time, e.g. 0,1. Default: all.")
@click.option("--slurm-partition", default=None, help="slurm: partition. Default: the cluster's default.")
@click.option(
    "--slurm-time",
    type=int,
    default=None,
    help="slurm: time limit per job in minutes (at least 2); a job reaching it saves a checkpoint, is requeued and "
    "resumes. Default: 120.",
)
@click.option("--slurm-gpus", type=int, default=None, help="slurm: GPUs per job (0 = CPU jobs). Default: 1.")
@click.option("--slurm-cpus", type=int, default=None, help="slurm: CPUs per job. Default: 8.")
@click.option("--slurm-mem", type=float, default=None, help="slurm: memory per job in GB. Default: the partition's.")
@click.option(
    "--slurm-array-parallelism", type=int, default=None, help="slurm: jobs running at the same time. Default: 16."
)
@click.option(
    "--slurm-poll",
    type=float,
    default=None,
    help="slurm: seconds between two questions to the scheduler (sacct, else squeue). Default: 30.",
)
@click.option("--no-report", is_flag=True, help="Skip writing the report at the end.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run(**options) -> None:  # fmt: skip
    """Train every selected model on the same cross-validation folds with one recipe and compare them.

    Writes RUN_DIR/metrics.csv (per case), RUN_DIR/jobs.csv (per job: status, memory, speed) and a report.
    Exit status 0 only if every job is done.
    """
    from segbench.errors import ConfigError
    from segbench.runner import default_run_dir, run_comparison

    if options["resume"] and options["out"] is None:
        raise ConfigError("--resume needs --out RUN_DIR naming the run to continue")
    executor = _build_executor(options)
    config = _config_from_options(options, click.get_current_context())
    run_dir = options["out"] or default_run_dir()
    _interrupt_on_sigterm()
    click.echo(f"segbench run → {run_dir}", err=True)
    outcome = run_comparison(
        config, run_dir=run_dir, resume=options["resume"], progress=not options["quiet"],
        report=not options["no_report"], executor=executor,
    )  # fmt: skip
    _print_summary(outcome)
    raise SystemExit(0 if outcome.all_done else 1)


# flag (click's name) -> (config section or "", field, conversion of the flag's value)
_CONFIG_FLAGS = {
    "data": ("", "data", lambda v: str(v) if v else None),
    "models": ("", "models", lambda v: tuple(m.strip() for m in v.split(",") if m.strip())),
    "folds": ("", "folds", int),
    "splits": ("", "splits", str),
    "seed": ("", "seed", int),
    "device": ("", "device", str),
    "target_spacing": ("", "target_spacing", lambda v: tuple(v) if v else None),
    "job_timeout": ("", "job_timeout_s", lambda v: v),
    "match": ("", "match", str),
    "match_to": ("", "match_to", str),
    "iterations": ("train", "iterations", int),
    "time_budget": ("train", "time_budget_s", float),
    "patch": ("train", "patch_size", tuple),
    "batch_size": ("train", "batch_size", int),
    "lr": ("train", "lr", float),
    "optimizer": ("train", "optimizer", str),
    "num_workers": ("train", "num_workers", int),
    "mirror": ("inference", "mirror", bool),
    "overlap": ("inference", "overlap", float),
}


def _config_from_options(options: dict, ctx: click.Context):
    """The run config: defaults (or, with --resume, the stored config) plus the flags given on the command line.

    With --resume only flags the user actually typed override the stored run, so `segbench run --resume --out DIR`
    continues a run without repeating its original flags.
    """
    import dataclasses

    from click.core import ParameterSource

    from segbench import results, rundir
    from segbench.config import RunConfig, config_from_dict

    manifest = rundir.manifest_path(options["out"]) if options["out"] else None
    if options["resume"] and manifest is not None and manifest.exists():
        base = config_from_dict(results.load_manifest(options["out"])["config"])
        given = {name for name in _CONFIG_FLAGS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    else:
        base = RunConfig()
        given = {name for name in _CONFIG_FLAGS if options[name] is not None}
    changes: dict[str, dict] = {"": {}, "train": {}, "inference": {}}
    for name in given:
        section, field, convert = _CONFIG_FLAGS[name]
        changes[section][field] = convert(options[name])
    return dataclasses.replace(
        base,
        **changes[""],
        train=dataclasses.replace(base.train, **changes["train"]),
        inference=dataclasses.replace(base.inference, **changes["inference"]),
    )


# --slurm-* flag (click's name) -> SlurmOptions field.
_SLURM_FLAGS = {
    "slurm_partition": "partition",
    "slurm_time": "time_min",
    "slurm_gpus": "gpus_per_job",
    "slurm_cpus": "cpus_per_job",
    "slurm_mem": "mem_gb",
    "slurm_array_parallelism": "array_parallelism",
    "slurm_poll": "poll_s",
}


def _build_executor(options: dict):
    """The executor for --executor and its options (validated before any work starts)."""
    from segbench.errors import ConfigError
    from segbench.executors import LocalOptions, SlurmOptions, make_executor, parse_gpu_ids

    slurm = {field: options[flag] for flag, field in _SLURM_FLAGS.items() if options[flag] is not None}
    if options["executor"] == "slurm":
        if options["in_process"]:
            raise ConfigError("--in-process applies to --executor local; drop it for --executor slurm")
        if options["gpus"] is not None:
            raise ConfigError("--gpus applies to --executor local; use --slurm-gpus for GPUs per Slurm job")
        return make_executor("slurm", options=SlurmOptions(**slurm))
    if slurm:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in _SLURM_FLAGS if options[flag] is not None)
        raise ConfigError(f"{flags}: Slurm options need --executor slurm; add it or drop them")
    if options["gpus"] is not None and options["device"] == "cpu":
        raise ConfigError("--gpus needs GPU jobs; drop --device cpu (or --gpus)")
    gpus = parse_gpu_ids(options["gpus"]) if options["gpus"] is not None else None
    if options["in_process"] and gpus is not None:
        raise ConfigError("--in-process runs every job in this one process; drop --gpus (or --in-process)")
    return make_executor("local", options=LocalOptions(gpus=gpus, in_process=options["in_process"]))


def _print_summary(outcome) -> None:
    import pandas as pd

    from segbench import results, rundir
    from segbench.report import tables
    from segbench.report.matching import matching_lines, matching_record

    metrics = results.load_metrics(outcome.run_dir)
    jobs = results.load_jobs(outcome.run_dir)
    record = matching_record(results.load_manifest(outcome.run_dir))
    if record is not None:
        click.echo("\n" + "\n".join(matching_lines(record)))
    if not metrics.empty:
        # The report's leaderboard (summary.csv numbers), metric columns only: one definition of every statistic.
        board = tables.leaderboard(tables.per_case_table(metrics), jobs, models=[])
        statistics = [c for m in tables.metrics_in(metrics) for c in tables.statistic_columns(m) if "_ci_" not in c]
        table = board.set_index("model")[["cases", *statistics, "misses"]]
        with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
            click.echo("\nLeaderboard (out-of-fold cases; distances in mm, misses count as the image diagonal):")
            click.echo(table.to_string())
    not_done = jobs[jobs["status"] != "done"] if not jobs.empty else jobs
    for _, row in not_done.iterrows():
        click.echo(f"job {row['model']} fold {row['fold']}: {row['status']} — {row['reason']}", err=True)
    for problem in outcome.problems:
        click.echo(f"warning: {problem}", err=True)
    click.echo(f"\nTables: {rundir.metrics_path(outcome.run_dir)}, {rundir.jobs_table_path(outcome.run_dir)}")
    if outcome.report_dir is not None:
        click.echo(f"Report: {outcome.report_dir}")
