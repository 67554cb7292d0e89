"""``segbench plan DATA``: nnU-Net v2's experiment plan for a dataset, written as an nnU-Net plans file."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main
from segbench.rundir import PLANS_FILE  # the same name a run gives its copy of the plan

PRESET_NAMES = ("nnunet", "resenc-m", "resenc-l", "resenc-xl")


@main.command("plan")
@click.argument("data_dir", metavar="DATA", type=click.Path(path_type=Path))
@click.option(
    "--preset",
    type=click.Choice(PRESET_NAMES),
    default="nnunet",
    show_default=True,
    help="nnU-Net's planner: the default ExperimentPlanner or the residual-encoder presets M, L, XL.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path(PLANS_FILE),
    show_default=True,
    help="The plans file; its fingerprint goes beside it (NAME.json -> NAME.fingerprint.json).",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@click.option(
    "--fit",
    "fit_models",
    metavar="MODELS",
    default=None,
    help="Fit patch and batch to these models (comma-separated names or wildcards) instead of nnU-Net's "
    "U-Net: every one's exact training-step memory must fit --gpu-memory.",
)
@click.option(
    "--gpu-memory",
    type=float,
    default=None,
    metavar="GB",
    help="With --fit: the memory budget (GiB). Alone: nnU-Net's VRAM target instead of the preset's.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default="fp32",
    show_default=True,
    help="With --fit: the training precision the memory is estimated for.",
)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="With --fit: the optimiser (Adam keeps two moments per weight, SGD one).")  # fmt: skip
def plan_command(
    data_dir: Path,
    preset: str,
    out: Path,
    force: bool,
    fit_models: str | None,
    gpu_memory: float | None,
    precision: str,
    optimizer: str,
) -> None:
    """Plan DATA (an MSD task or nnU-Net v2 raw folder) as nnU-Net v2.8.1 does and write an nnU-Net plans file.

    Spacing, transposition, patch, batch size, normalization and network topology equal nnU-Net's own planner
    (tested against it). Plans are in nnU-Net's axis order (segbench's array axes reversed).
    """
    from segbench.errors import ConfigError
    from segbench.plans import plan_dataset, write_plan
    from segbench.plans.api import check_outputs

    check_outputs(out, force=force)  # before the fingerprint: refusing costs nothing
    if fit_models is not None and gpu_memory is None:
        raise ConfigError("--fit needs --gpu-memory GB: the memory every listed model must fit in")
    models = _resolve(fit_models) if fit_models is not None else None
    plan = plan_dataset(data_dir, preset=preset, progress=True, gpu_memory_gb=None if models else gpu_memory)
    fitted = None
    if models:
        from segbench.plans.fit import fit_plan

        click.echo(f"fitting the patch to {', '.join(models)} (FakeTensor estimates, a few seconds each) ...", err=True)
        fitted = fit_plan(plan, models, gpu_memory_gb=gpu_memory, precision=precision, optimizer=optimizer)
        plan = fitted.plan
    plans_path, finger_path = write_plan(plan, out, force=force)
    click.echo(format_summary(plan))
    if fitted is not None:
        click.echo(format_fit(fitted))
    click.echo(f"wrote {plans_path} and {finger_path}")


def _resolve(pattern: str) -> list[str]:
    from segbench.errors import ConfigError
    from segbench.registry import resolve_models

    names = resolve_models(pattern)
    if not names:
        raise ConfigError(f"--fit {pattern!r} names no model; see `segbench models`")
    return list(names)


def _x(values) -> str:
    return " × ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def format_summary(plan) -> str:
    """The short summary ``segbench plan`` prints (3d_fullres, or 2d for 2D data)."""
    name = "3d_fullres" if "3d_fullres" in plan.configurations else "2d"
    c = plan.configurations[name]
    preset = plan.preset
    ref_batch = preset.reference_batch_3d if len(c.spacing) == 3 else preset.reference_batch_2d
    # nnU-Net's proxy in GB: the reference value stands for the preset's GPU memory at the reference batch size.
    approx_gb = c.estimate * c.batch_size / ref_batch / c.reference * preset.gpu_memory_gb
    norms = ", ".join(
        f"{n}{' (nonzero mask)' if m else ''}"
        for n, m in zip(plan.normalization_schemes, plan.use_mask_for_norm, strict=True)
    )
    strides = " ".join("x".join(map(str, s)) for s in c.topology.strides[1:])
    lines = [
        f"{plan.dataset_name}: {name} by {preset.planner} ({preset.name}), {len(plan.fingerprint.spacings)} cases",
        f"  spacing        {_x(tuple(round(s, 4) for s in c.spacing))} mm "
        f"(transpose_forward {list(plan.transpose_forward)})",
        f"  patch          {_x(c.patch_size)} voxels",
        f"  batch size     {c.batch_size}",
        f"  normalization  {norms}",
        f"  network        {preset.network_class_name.rsplit('.', 1)[-1]}: {c.topology.n_stages} stages, "
        f"features {'-'.join(map(str, c.features))}, strides {strides}",
        f"  est. memory    ~{approx_gb:.1f} GB of {preset.gpu_memory_gb:g} GB by nnU-Net's proxy "
        f"({c.estimate / 1e6:.1f} M feature-map elements per sample, reference {c.reference / 1e6:.0f} M)",
        f"  configurations {', '.join(plan.configurations)}",
    ]  # fmt: skip
    return "\n".join(lines)


def format_fit(fit) -> str:
    """Each model's exact training-step estimate at the fitted patch and batch, and nnU-Net's own choice."""
    c = fit.plan.configurations["3d_fullres"]
    lines = [
        f"fitted to {fit.budget_mb / 1024:g} GiB at {fit.precision}: patch {_x(c.patch_size)}, batch {c.batch_size}",
        f"  nnU-Net's heuristic chose patch {_x(fit.nnunet_patch)}, batch {fit.nnunet_batch}; "
        f"{fit.estimates} exact estimate{'s' if fit.estimates > 1 else ''} per model",
        f"  {'model':<24} {'peak MiB':>10} {'activations':>12} {'weights+grads+opt':>18}",
    ]
    for name, m in fit.memory.items():
        fixed = m.parameters_mb + m.gradients_mb + m.optimizer_mb
        lines.append(f"  {name:<24} {m.peak_mb:>10,.0f} {m.activations_mb:>12,.0f} {fixed:>18,.0f}")
    if c.batch_size == fit.batch_cap:
        share = f"{fit.plan.preset.max_dataset_covered:.0%}"
        lines.append(f"  batch size capped at {fit.batch_cap} by nnU-Net's rule that a batch covers at most {share} "
                     "of the dataset's voxels (at least 2)")  # fmt: skip
    return "\n".join(lines)
