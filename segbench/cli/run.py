"""``segbench run``: train and evaluate every model on the same folds, then tables and a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from segbench.cli.group import main
from segbench.config import InferenceConfig, RunConfig, TrainConfig
from segbench.rundir import MANIFEST_FILE, PLANS_FILE

# The defaults --help shows (with --resume: the stored run's).
_RUN, _TRAIN, _INFER = RunConfig(), TrainConfig(), InferenceConfig()


class ConfigDefault(click.Option):
    """An option whose default lives in the config (``None`` here, so --resume can tell a typed flag from the stored
    value); --help shows the config's default as ``[default: 120]`` rather than click's ``[default: (120)]``."""

    def get_help_extra(self, ctx: click.Context) -> dict:
        extra = super().get_help_extra(ctx)
        if isinstance(self.show_default, str):
            extra["default"] = self.show_default
        return extra


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
    help="MSD or nnU-Net raw dataset folder, or synth:NAME for an embedded synthetic task (heart, ct_lesion, thin; "
    "docs/tasks.md). Default: synth:heart, the Task02-like dataset.",
)
@click.option(
    "--recipe",
    type=click.Choice(["tutorial", "nnunet"]),
    default=None,
    cls=ConfigDefault,
    show_default="tutorial",
    help="Training recipe: tutorial (the embedded demo's) or nnunet (nnU-Net v2.8.1's nnUNetTrainer, with a plan "
    "computed on the fly unless --plans is given). Flags below override single values; the report lists each "
    "override as a deviation.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Budget in epochs of the recipe (nnunet: 250 iterations each; default 1000, nnU-Net's).",
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
@click.option(
    "--iterations",
    type=int,
    default=None,
    cls=ConfigDefault,
    show_default=f"the recipe's; tutorial: {_TRAIN.iterations}",
    help="Training iterations per job (same for every model).",
)
@click.option(
    "--time-budget",
    "time_budget",
    type=float,
    default=None,
    cls=ConfigDefault,
    show_default="none",
    help="Training seconds per job instead of an iteration budget.",
)
@click.option(
    "--patch",
    nargs=3,
    type=int,
    default=None,
    metavar="D H W",
    cls=ConfigDefault,
    show_default="the plan's with --plans or --recipe nnunet; tutorial: " + " ".join(map(str, _TRAIN.patch_size)),
    help="Training / inference patch size in voxels (a warning suggests a planned one for large images).",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    cls=ConfigDefault,
    show_default=f"the plan's with --plans or --recipe nnunet; tutorial: {_TRAIN.batch_size}",
    help="Patches per training step.",
)
@click.option(
    "--lr",
    type=float,
    default=None,
    cls=ConfigDefault,
    show_default=f"the recipe's; tutorial: {_TRAIN.lr}, nnunet: 0.01",
    help="Initial learning rate.",
)
@click.option(
    "--optimizer",
    type=click.Choice(["adam", "sgd", "adamw"]),
    default=None,
    cls=ConfigDefault,
    show_default=f"the recipe's; tutorial: {_TRAIN.optimizer}, nnunet: sgd",
    help="Optimiser (poly LR decay).",
)
@click.option(
    "--optimizer-for",
    "optimizer_for",
    multiple=True,
    metavar="MODEL=OPTIMIZER:LR",
    help="Another optimiser for one model (repeatable), e.g. swinunetr=adamw:1e-4; reported as a deviation.",
)
@click.option(
    "--target-spacing",
    nargs=3,
    type=float,
    default=None,
    metavar="SD SH SW",
    cls=ConfigDefault,
    show_default="native",
    help="Resample to this spacing in mm (predictions are resampled back).",
)
@click.option(
    "--plans",
    type=click.Path(path_type=Path),
    default=None,
    help="nnU-Net plans file (nnUNetPlans.json, or `segbench plan`'s): spacing, transposition, patch, batch size, "
    f"normalization and resampling come from it (--patch / --batch-size override). Copied into RUN_DIR/{PLANS_FILE}.",
)
@click.option(
    "--configuration",
    default=None,
    cls=ConfigDefault,
    show_default=_RUN.configuration,
    help="The configuration of --plans to use.",
)
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default=None,
    cls=ConfigDefault,
    show_default=_TRAIN.precision,
    help="Training and inference numerics. auto: bf16 where the CPU (AVX-512 BF16/AMX) or GPU runs it natively, "
    "fp16 with loss scaling on older GPUs, else fp32. Recorded per job in the jobs table.",
)
@click.option(
    "--memory-format",
    "memory_format",
    type=click.Choice(["auto", "channels_last", "contiguous"]),
    default=None,
    cls=ConfigDefault,
    show_default=_TRAIN.memory_format,
    help="Layout of 5-D tensors. auto: channels_last (channels-last-3d, faster on CPU and CUDA as measured).",
)
@click.option(
    "--mirror/--no-mirror",
    default=None,
    cls=ConfigDefault,
    show_default="the recipe's; tutorial: no-mirror, nnunet: mirror",
    help="Mirroring test-time augmentation.",
)
@click.option(
    "--save-probabilities",
    is_flag=True,
    default=None,
    cls=ConfigDefault,
    show_default="off",
    help="Keep each out-of-fold case's class probabilities (float16 <case_id>.npz beside its prediction), as "
    "`segbench ensemble` needs. May be switched on with --resume: finished jobs then add the missing files from their "
    "final checkpoint.",
)
@click.option(
    "--overlap",
    type=float,
    default=None,
    cls=ConfigDefault,
    show_default=str(_INFER.overlap),
    help="Sliding-window overlap in [0, 1).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--repeats",
    type=int,
    default=None,
    cls=ConfigDefault,
    show_default=str(_RUN.repeats),
    help="Training seeds per (model, fold), same splits. R >= 2 measures training-seed variance and "
    "lets the report require a winner to be consistent across repeats; 3 is a good start for close results.",
)
@click.option(
    "--tolerance-mm",
    type=float,
    default=None,
    cls=ConfigDefault,
    show_default=str(_RUN.tolerance_mm),
    help="NSD (surface Dice) tolerance in mm (keep it at or above the largest voxel spacing).",
)
@click.option(
    "--job-timeout",
    type=float,
    default=None,
    cls=ConfigDefault,
    show_default="none",
    help="Wall-clock limit per job in seconds (status timeout).",
)
@click.option(
    "--num-workers",
    type=int,
    default=None,
    cls=ConfigDefault,
    show_default="auto",
    help="Data-loader worker processes per job (auto: 0 on the CPU, where the step uses every core; 1 on CUDA, or "
    "with --recipe nnunet one per core but one, at most 12).",
)
@click.option(
    "--checkpoint-every",
    type=int,
    default=None,
    cls=ConfigDefault,
    show_default=str(_TRAIN.checkpoint_every),
    help=f"Save a checkpoint every N iterations (a multiple of {_TRAIN.log_every}; also at the end and "
    "when interrupted). May change on --resume.",
)
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
@click.option("--slurm-gpus", type=int, default=None, help="slurm: GPUs per job, 0 (CPU jobs) or 1. Default: 1.")
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
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (repeatable): a module of your own that registers models with "
    f"segbench.registry.register_model. Recorded in {MANIFEST_FILE} and reused by --resume.",
)
@click.option("--no-report", is_flag=True, help="Skip writing the report at the end.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or iteration lines: one line per finished job.")
def run(**options) -> None:  # fmt: skip
    """Train every selected model on the same cross-validation folds with one recipe and compare them.

    Writes RUN_DIR/metrics.csv (per case), RUN_DIR/jobs.csv (per job: status, memory, speed) and a report.
    Exit status 0 only if every job is done. With --resume the stored run's settings are the defaults; flags you
    give override them.
    """
    from segbench.errors import ConfigError
    from segbench.registry import import_user_modules
    from segbench.runner import default_run_dir, run_comparison

    if options["resume"] and options["out"] is None:
        raise ConfigError("--resume needs --out RUN_DIR naming the run to continue")
    from segbench.allocator import keep_freed_memory

    keep_freed_memory()  # this process is segbench's: the cost estimate's steps and --in-process jobs run here
    imports = options["imports"] or _stored_imports(options)
    import_user_modules(imports)
    executor = _build_executor(options)
    config = _config_from_options(options, click.get_current_context())
    if not options["resume"]:
        config = _with_recipe_plan(config)
    if config.plans and not options["resume"]:
        config = _with_plan(config, options)
    run_dir = options["out"] or default_run_dir()
    _interrupt_on_sigterm()
    click.echo(f"segbench run → {run_dir}", err=True)
    try:
        outcome = run_comparison(
            config, run_dir=run_dir, resume=options["resume"], progress=not options["quiet"],
            report=not options["no_report"], executor=executor, imports=imports, command=_command_line(),
            on_resume=_print_resume_plan, on_estimate=_print_estimate,
        )  # fmt: skip
    except KeyboardInterrupt:
        click.echo("interrupted: finished jobs are kept and the interrupted one continues from its latest checkpoint; "
                   f"continue with:\n  {resume_command(run_dir)}", err=True)  # fmt: skip
        raise SystemExit(130) from None
    _print_summary(outcome)
    raise SystemExit(0 if outcome.all_done else 1)


def _with_recipe_plan(config):
    """A recipe that needs a plan (nnunet) and no --plans: plan the dataset now with nnU-Net's default planner."""
    import dataclasses

    from segbench.recipes.catalog import get_recipe

    if config.plans or not get_recipe(config.recipe).needs_plan:
        return config
    from segbench.data.synth import resolve_data
    from segbench.plans.api import planned_for_run

    data = resolve_data(config.data)
    click.echo(f"--recipe {config.recipe}: planning {data} with nnU-Net's default planner (no --plans given)", err=True)
    return dataclasses.replace(config, plans=str(planned_for_run(data)))


def _with_plan(config, options: dict):
    """--plans: the plan's patch and batch size, except where --patch / --batch-size override them."""
    from segbench.plans.reader import config_with_plan, read_plan

    plan = read_plan(config.plans, config.configuration)
    flags = {"patch_size": ("patch", "--patch"), "batch_size": ("batch_size", "--batch-size")}
    keep = tuple(field for field, (option, _) in flags.items() if options[option] is not None)
    for field in keep:
        click.echo(f"warning: {flags[field][1]} overrides the plan's {field} {getattr(plan, field)}", err=True)
    return config_with_plan(config, plan, keep=keep)


def resume_command(run_dir: Path) -> str:
    """The full command that continues the run in ``run_dir`` (its stored settings are reused)."""
    return f"segbench run --resume --out {shlex.quote(str(run_dir))}"


def _command_line() -> str:
    """This process's command line as the user would type it (``segbench ...``), quoted for a POSIX shell."""
    return shlex.join(["segbench", *sys.argv[1:]])


def _stored_imports(options: dict) -> tuple[str, ...]:
    """With --resume and no --import: the modules the stored run imported (its models need them)."""
    from segbench import results, rundir

    if not options["resume"] or options["out"] is None or not rundir.manifest_path(options["out"]).is_file():
        return ()
    return tuple(results.load_manifest(options["out"]).get("imports") or ())


def _print_estimate(estimate) -> None:
    """The cost estimate (:meth:`segbench.estimate.CostEstimate.lines`), before the first job."""
    for line in estimate.lines():
        click.echo(line, err=True)


def _print_resume_plan(plan) -> None:
    """``resume: kept 3 (…), continued 1 (…), restarted 2 (…)`` before the jobs run."""
    click.echo(f"resume: {len(plan.kept)} job(s) kept, {len(plan.continued)} continued, {len(plan.restarted)} "
               "restarted", err=True)  # fmt: skip
    for title, jobs in (("kept", plan.kept), ("continued", plan.continued), ("restarted", plan.restarted)):
        for model, fold, why in jobs:
            click.echo(f"  {title:<9} {model} fold {fold} ({why})", err=True)


# flag (click's name) -> (config section or "", field, conversion of the flag's value)
_CONFIG_FLAGS = {
    "data": ("", "data", lambda v: str(v) if v else None),
    "recipe": ("", "recipe", str),
    "models": ("", "models", lambda v: tuple(m.strip() for m in v.split(",") if m.strip())),
    "folds": ("", "folds", int),
    "splits": ("", "splits", str),
    "seed": ("", "seed", int),
    "repeats": ("", "repeats", int),
    "tolerance_mm": ("", "tolerance_mm", float),
    "device": ("", "device", str),
    "target_spacing": ("", "target_spacing", lambda v: tuple(v) if v else None),
    "job_timeout": ("", "job_timeout_s", lambda v: v),
    "match": ("", "match", str),
    "match_to": ("", "match_to", str),
    "plans": ("", "plans", lambda v: str(Path(v).resolve()) if v else None),
    "configuration": ("", "configuration", str),
    "iterations": ("train", "iterations", int),
    "time_budget": ("train", "time_budget_s", float),
    "patch": ("train", "patch_size", tuple),
    "batch_size": ("train", "batch_size", int),
    "lr": ("train", "lr", float),
    "optimizer": ("train", "optimizer", str),
    "num_workers": ("train", "num_workers", int),
    "precision": ("train", "precision", str),
    "memory_format": ("train", "memory_format", str),
    "checkpoint_every": ("train", "checkpoint_every", int),
    "optimizer_for": ("train", "model_optimizers", lambda v: tuple(_optimizer_override(item) for item in v)),
    "mirror": ("inference", "mirror", bool),
    "overlap": ("inference", "overlap", float),
    "save_probabilities": ("inference", "save_probabilities", bool),
}


def _config_from_options(options: dict, ctx: click.Context):
    """The run config: defaults (or, with --resume, the stored config) plus the flags given on the command line.

    With --resume only flags the user actually typed override the stored run, so `segbench run --resume --out DIR`
    continues a run without repeating its original flags.
    """
    import dataclasses

    from click.core import ParameterSource

    from segbench import results, rundir
    from segbench.config import config_from_dict
    from segbench.recipes.catalog import recipe_config, with_epochs

    manifest = rundir.manifest_path(options["out"]) if options["out"] else None
    if options["resume"] and manifest is not None and manifest.exists():
        base = config_from_dict(results.load_manifest(options["out"])["config"])
        given = {name for name in _CONFIG_FLAGS if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    else:
        base = recipe_config(options["recipe"] or "tutorial")
        given = {name for name in _CONFIG_FLAGS if options[name] not in (None, ())}
    changes: dict[str, dict] = {"": {}, "train": {}, "inference": {}}
    for name in given:
        section, field, convert = _CONFIG_FLAGS[name]
        changes[section][field] = convert(options[name])
    config = dataclasses.replace(
        base,
        **changes[""],
        train=dataclasses.replace(base.train, **changes["train"]),
        inference=dataclasses.replace(base.inference, **changes["inference"]),
    )
    if options["epochs"] is not None:
        if options["iterations"] is not None or options["time_budget"] is not None:
            raise click.UsageError("--epochs sets the budget: drop --iterations / --time-budget, or --epochs")
        config = with_epochs(config, options["epochs"])
    return config


def _optimizer_override(text: str) -> tuple[str, str, float]:
    """``"swinunetr=adamw:1e-4"`` -> ``("swinunetr", "adamw", 0.0001)``."""
    model, _, rest = text.partition("=")
    optimizer, _, lr = rest.partition(":")
    try:
        return model.strip(), optimizer.strip(), float(lr)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not MODEL=OPTIMIZER:LR (e.g. swinunetr=adamw:1e-4)",
                                 param_hint="--optimizer-for") from None  # fmt: skip


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
        board = tables.leaderboard(tables.case_means(tables.per_case_table(metrics)), jobs, models=[])
        statistics = [c for m in tables.metrics_in(metrics) for c in tables.statistic_columns(m) if "_ci_" not in c]
        table = board.set_index("model")[["cases", *statistics, "misses"]]
        with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
            click.echo("\nLeaderboard (out-of-fold cases; distances in mm, misses count as the image diagonal):")
            click.echo(table.to_string())
    not_done = jobs[jobs["status"] != "done"] if not jobs.empty else jobs
    for _, row in not_done.iterrows():
        repeat = f" repeat {int(row['repeat'])}" if "repeat" in row and jobs["repeat"].nunique() > 1 else ""
        click.echo(f"job {row['model']} fold {row['fold']}{repeat}: {row['status']} — {row['reason']}", err=True)
    for problem in outcome.problems:
        click.echo(f"warning: {problem}", err=True)
    from segbench.runner import FINAL_STATUSES

    if not jobs.empty and (~jobs["status"].isin(FINAL_STATUSES)).any():
        click.echo(f"Unfinished jobs run again (or continue from their checkpoint) with:\n  "
                   f"{resume_command(outcome.run_dir)}", err=True)  # fmt: skip
    click.echo(f"\nTables: {rundir.metrics_path(outcome.run_dir)}, {rundir.jobs_table_path(outcome.run_dir)}")
    if outcome.report_dir is not None:
        click.echo(f"Report: {outcome.report_dir}")
