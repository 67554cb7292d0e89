"""`segbench models [PATTERN]`: the table of available models and what they cost."""

from __future__ import annotations

import math

import click

from segbench.cli.group import main

COLUMNS = ("name", "family", "source", "params", "MFLOP/vox fwd", "MFLOP/vox train", "divisor")
#: With --plans: the FLOPs of one patch (batch 1) at the plan's patch.
PLAN_COLUMNS = (*COLUMNS, "GFLOP/patch fwd", "GFLOP/patch train")


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--in-channels", default=1, show_default=True, help="Image channels the models are built for.")
@click.option("--out-channels", default=1, show_default=True, help="Logit channels the models are built for.")
@click.option(
    "--families",
    "show_families",
    is_flag=True,
    help="List the width/depth families instead: their knobs, valid ranges and listed grid.",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE first (repeatable): your own module that registers models; its source is shown.",
)
@click.option(
    "--memory",
    is_flag=True,
    help="Instead: estimated peak tensor memory of one training step (FakeTensor: no GPU, nothing allocated).",
)
@click.option(
    "--patch", nargs=3, type=int, default=None, metavar="D H W", help="--memory: patch size (default: the run's)."
)
@click.option("--batch-size", type=int, default=None, help="--memory: patches per step (default: the run's).")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
    default="auto",
    show_default=True,
    help="--memory: autocast precision (auto: what a run on this machine's default device uses; the table says which).",
)
@click.option(
    "--memory-format",
    type=click.Choice(["auto", "channels_last", "contiguous"]),
    default="auto",
    show_default=True,
    help="--memory: memory format of weights and inputs.",
)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="--memory: optimiser (Adam keeps two moments per weight, SGD one).")  # fmt: skip
@click.option("--plans", "plans", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="An nnU-Net plans file: list nnU-Net's networks built from it too, with FLOPs at its "
              "patch.")  # fmt: skip
@click.option("--configuration", default="3d_fullres", show_default=True, help="--plans: the configuration to use.")
def models_command(
    pattern: str | None,
    in_channels: int,
    out_channels: int,
    show_families: bool,
    imports: tuple[str, ...],
    memory: bool,
    plans: str | None,
    configuration: str,
    **memory_options,
) -> None:
    """List models: name, family, source, parameters, MFLOP per voxel (forward and training step), divisor.

    PATTERN filters names with wildcards, comma-separated (e.g. 'unet_*' or 'fcn,unet_w20_*'); an exact
    family member that is not listed by default (e.g. unet_w32_d4) is shown too. Sources are "segbench",
    "monai" or the distribution of a plugin. Input sizes must be multiples of the divisor. Plugins are imported,
    so that the grids of plugin families are listed.

    nnU-Net's networks (nnunet_plain, nnunet_resenc_m/l/xl) are built from a plan: with --plans FILE they are listed
    with the parameters and FLOPs of the network the plan gives (its patch and spacing), and every model gets the
    FLOPs of one patch of the plan; a model whose divisor does not divide that patch is named with the nearest patch
    that fits.
    """
    from tqdm import tqdm

    from segbench.errors import ModelError
    from segbench.registry import import_user_modules, list_models, model_info, resolve_models, unavailable_models

    import_user_modules(imports)

    if show_families:
        click.echo(_families_table(pattern))
        return
    # resolve_models also accepts exact unlisted family members, and names the choices for a bad pattern.
    names = list_models(load_plugins=True) if pattern is None else resolve_models(pattern)
    if not names:
        raise ModelError("no models are available; reinstall segbench")
    plan = None
    if plans is None or memory:  # the memory estimate builds models without a plan
        names = _without_plan_models(names, pattern)
    if memory:
        _memory_table(names, in_channels=in_channels, out_channels=out_channels, **memory_options)
        return
    if plans is not None:
        from segbench.plans.network import read_network_plan

        plan = read_network_plan(plans, configuration)
        click.echo(f"FLOPs per patch at {' x '.join(map(str, plan.patch_size))} voxels (batch 1), from {plan.origin}",
                   err=True)  # fmt: skip
    rows, broken = [], []
    for name in tqdm(names, desc="counting FLOPs", unit="model", leave=False, disable=None):
        try:
            info = model_info(name, in_channels=in_channels, out_channels=out_channels, plan=plan)
        except ModelError as exc:  # a broken plugin must not hide the other models
            broken.append(str(exc))
            rows.append((name, *("?",) * (len(PLAN_COLUMNS if plan else COLUMNS) - 1)))
            continue
        rows.append(_cost_row(info, plan, broken))
    click.echo(_format_table(PLAN_COLUMNS if plan else COLUMNS, rows))
    for message in broken:
        click.echo(f"warning: {message}", err=True)
    # On stderr, like the warnings: stdout stays the table alone, for scripts.
    for name, reason in unavailable_models().items():
        click.echo(f"not available: {name} {reason}", err=True)


def _without_plan_models(names: list[str], pattern: str | None) -> list[str]:
    """``names`` less the plan-built models, which are named on stderr (they need --plans)."""
    from segbench.errors import ModelError
    from segbench.registry import needs_plan

    def planned_model(name: str) -> bool:
        try:
            return needs_plan(name)
        except ModelError:  # a broken plugin: listed with "?" and its error below, like any other model
            return False

    planned = [name for name in names if planned_model(name)]
    if planned:
        click.echo(f"needs a plan: {', '.join(planned)} (pass --plans FILE to list them; --memory leaves them out)",
                   err=True)  # fmt: skip
        if pattern is not None and len(planned) == len(names):
            raise ModelError(f"{', '.join(planned)} need a plan: pass --plans FILE (a plans file from `segbench plan` "
                             "or nnU-Net) to list them")  # fmt: skip
    return [name for name in names if name not in planned]


def _cost_row(info, plan, notes: list[str]) -> tuple[str, ...]:
    """One table row; with a plan, the FLOPs of one patch (``?`` and a note when the patch does not fit)."""
    per_axis = info.axis_divisors and len(set(info.axis_divisors)) > 1
    divisor = "x".join(map(str, info.axis_divisors)) if per_axis else str(info.divisor)
    row = (info.name, info.family, info.source, f"{info.params:,}", _mflop(info.mflop_per_voxel_forward),
           _mflop(info.mflop_per_voxel_train), divisor)  # fmt: skip
    if plan is None:
        return row
    if info.patch is None:
        from segbench.patch_advice import nearest_fitting_patch

        divisors = info.axis_divisors or (info.divisor,) * len(plan.patch_size)
        nearest = nearest_fitting_patch(plan.patch_size, divisors)
        notes.append(f"{info.name} does not fit the plan's patch {' x '.join(map(str, plan.patch_size))} (sizes must "
                     f"be multiples of {divisor}); the nearest patch that fits is "
                     f"{' x '.join(map(str, nearest))}")  # fmt: skip
        return (*row, "?", "?")
    voxels = math.prod(info.patch)
    return (*row, _gflop(info.mflop_per_voxel_forward * voxels), _gflop(info.mflop_per_voxel_train * voxels))


def _gflop(mflop: float) -> str:
    return f"{mflop / 1e3:,.1f}" if math.isfinite(mflop) else "?"


MEMORY_COLUMNS = ("name", "peak MiB", "params", "grads", "optimizer", "activations", "temporaries", "other")
_PARTS = ("peak", "parameters", "gradients", "optimizer", "activations", "temporaries")


def _memory_table(names: list[str], *, patch, batch_size, precision, memory_format, optimizer, **channels) -> None:
    """Print the estimated training-step memory of ``names`` (``segbench models --memory``)."""
    import torch

    from segbench.config import TrainConfig
    from segbench.memory import estimate_memory
    from segbench.precision import resolve_memory_format, resolve_precision

    defaults = TrainConfig()
    patch = tuple(patch) if patch else tuple(defaults.patch_size)
    batch_size = batch_size or defaults.batch_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    requested = precision
    precision, memory_format = resolve_precision(precision, device), resolve_memory_format(memory_format, device)
    if requested == "auto":
        click.echo(_auto_precision_line(precision, device))
    table = estimate_memory(names, patch_size=patch, batch_size=batch_size, precision=precision,
                            memory_format=memory_format, optimizer=optimizer, device=device, progress=True,
                            **channels)  # fmt: skip
    rows = []
    for row in table.itertuples(index=False):
        values = [getattr(row, f"tensor_{part}_mb") for part in _PARTS]
        other = row.tensor_buffers_mb + row.tensor_other_mb
        rows.append((row.model, *(_mib(v) for v in (*values, other))))
    click.echo(
        f"Estimated peak tensor memory of one training step (MiB): patch {'x'.join(map(str, patch))}, batch "
        f"{batch_size}, {precision}, {memory_format}, {optimizer}; FakeTensor, nothing allocated. Allocator overhead "
        "(CUDA caching allocator, cuDNN workspaces) comes on top."
    )
    click.echo(_format_table(MEMORY_COLUMNS, rows, numeric_from=1))
    for row in table.itertuples(index=False):
        if row.error:
            click.echo(f"warning: {row.model}: {row.error}", err=True)


def _auto_precision_line(precision: str, device: str) -> str:
    """``precision auto resolves to fp32 here: cpu, AMD EPYC (AVX2), no native bf16``: which and why."""
    from segbench.precision import cpu_has_native_bf16, hardware_name

    if device == "cuda":
        why = "the GPU supports bf16" if precision == "bf16" else "the GPU has no bf16: fp16 with loss scaling"
    else:
        why = "native bf16 (AVX-512 BF16 / AMX)" if cpu_has_native_bf16() else "no native bf16 on this CPU"
    return (f"precision auto resolves to {precision} here ({device}: {hardware_name(device)}, {why}); "
            "--precision fp32|bf16|fp16 chooses another")  # fmt: skip


def _mib(value: float) -> str:
    return f"{value:,.1f}" if math.isfinite(value) else "?"


FAMILY_COLUMNS = ("family", "source", "width knob", "depth knob", "listed grid (width x depth)")


def _families_table(pattern: str | None) -> str:
    """One row per width/depth family (plugins included): knob keywords, valid ranges, listed grid."""
    import fnmatch

    from segbench.registry import families

    patterns = [p.strip() for p in (pattern or "*").split(",") if p.strip()]
    rows = []
    for spec in families(load_plugins=True):
        if not any(fnmatch.fnmatchcase(spec.name, p) for p in patterns):
            continue
        rows.append((f"{spec.name}_w{{W}}_d{{D}}", spec.source, f"{spec.width.parameter} {spec.width.describe()}",
                     f"{spec.depth.parameter} {spec.depth.describe()}", _grid(spec.grid)))  # fmt: skip
    return _format_table(FAMILY_COLUMNS, rows, numeric_from=len(FAMILY_COLUMNS))


def _grid(grid: tuple[tuple[int, int], ...]) -> str:
    """``"10,20,40 x 2,3"`` for a full product of widths and depths, else the pairs ``"16x3, 32x4"``."""
    widths, depths = sorted({w for w, _ in grid}), sorted({d for _, d in grid})
    if not grid:
        return "none"
    if len(set(grid)) == len(widths) * len(depths):
        return f"{','.join(map(str, widths))} x {','.join(map(str, depths))}"
    return ", ".join(f"{w}x{d}" for w, d in grid)


def _mflop(value: float) -> str:
    # NaN: the model builds but its forward pass failed while counting (see the logged warning).
    return f"{value:.4f}" if math.isfinite(value) else "?"


def _format_table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, numeric_from: int = 3) -> str:
    """Plain-text table: text columns left-aligned, numeric columns (from ``numeric_from`` on) right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    numeric = [index >= numeric_from for index in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
