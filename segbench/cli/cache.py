"""``segbench cache``: list what the cache holds (size, age, dataset) and remove entries by dataset or by age."""

from __future__ import annotations

import click

from segbench.cli.group import main
from segbench.data.cache import format_size as _size


@main.command("cache")
@click.option("--clear", is_flag=True, help="Remove the selected entries (default: only list them).")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    metavar="NAME|PATH",
    help="Select the entries of this dataset (its name as listed, or its folder); repeatable.",
)
@click.option(
    "--older-than",
    type=float,
    default=None,
    metavar="DAYS",
    help="Select the entries last used more than DAYS days ago.",
)
def cache_command(clear: bool, datasets: tuple[str, ...], older_than: float | None) -> None:
    """List the cache: generated datasets and preprocessed cases per dataset, with size and age.

    The cache folder is $SEGBENCH_CACHE, else ~/.cache/segbench. With --clear, remove the entries --dataset and
    --older-than select (both: entries matching both; neither: everything). Runs rebuild what they need.
    """
    from segbench.data.cache import list_entries, matches_dataset, remove_entries
    from segbench.errors import ConfigError
    from segbench.paths import cache_root

    if older_than is not None and not older_than >= 0:
        raise ConfigError(f"--older-than {older_than} must be a non-negative number of days")
    entries = list_entries()
    selected = [
        entry for entry in entries
        if (not datasets or any(matches_dataset(entry, name) for name in datasets))
        and (older_than is None or entry.age_days() > older_than)
    ]  # fmt: skip
    click.echo(f"cache: {cache_root()} ({_size(sum(e.size_bytes for e in entries))} in {len(entries)} entries)")
    if datasets and not any(matches_dataset(e, name) for e in entries for name in datasets):
        known = sorted({e.dataset for e in entries})
        raise ConfigError(f"--dataset {', '.join(datasets)} matches no cache entry; listed datasets: "
                          f"{', '.join(known) or 'none'}")  # fmt: skip
    if clear:
        freed = remove_entries(selected)
        click.echo(f"removed {len(selected)} entries, {_size(freed)} freed")
        return
    click.echo(_table(selected if (datasets or older_than is not None) else entries))


def _table(entries) -> str:
    """One row per dataset and kind: entries, size, age of the newest and oldest use."""
    groups: dict[tuple[str, str], list] = {}
    for entry in entries:
        groups.setdefault((entry.kind, entry.dataset), []).append(entry)
    header = ("kind", "dataset", "entries", "size", "last used", "oldest use", "dataset folder")
    rows = [
        (kind, dataset, str(len(group)), _size(sum(e.size_bytes for e in group)),
         _age(min(e.age_days() for e in group)), _age(max(e.age_days() for e in group)),
         group[0].dataset_path or "-")
        for (kind, dataset), group in groups.items()
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (header, tuple("-" * w for w in widths), *rows)]  # fmt: skip
    return "\n".join(lines) if rows else "(empty)"


def _age(days: float) -> str:
    if days < 1 / 24:
        return f"{days * 1440:.0f} min ago"
    if days < 1:
        return f"{days * 24:.1f} h ago"
    return f"{days:.1f} days ago"
