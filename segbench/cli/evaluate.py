"""`segbench evaluate PRED_DIR GT_DIR`: score any folder of predicted NIfTI masks against reference masks."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main
from segbench.errors import ConfigError
from segbench.rundir import METRICS_FILE


def _parse_labels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        labels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        labels = ()
    if not labels or any(label <= 0 for label in labels):
        raise ConfigError(f"--labels {text!r} must be comma-separated positive integers, e.g. --labels 1,2")
    return labels


@main.command()
@click.argument("pred_dir", type=click.Path(path_type=Path))
@click.argument("gt_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Per-case CSV to write (one row per case and label). Default: PRED_DIR/{METRICS_FILE}.",
)
@click.option("--tolerance-mm", type=float, default=2.0, show_default=True, help="NSD (surface Dice) tolerance in mm.")
@click.option("--labels", "labels_text", default=None, help="Labels to score, e.g. 1,2. Default: every label found.")
@click.option(
    "--pred-suffix",
    default="",
    help="Text between case id and extension in prediction names, e.g. _seg for la_003_seg.nii.gz.",
)
def evaluate(
    pred_dir: Path, gt_dir: Path, out: Path | None, tolerance_mm: float, labels_text: str | None, pred_suffix: str
) -> None:
    """Score predicted label maps in PRED_DIR against references in GT_DIR (matched by case id).

    Writes every metric of the catalogue (dice, hd, hd95, assd, nsd, ...), volumes and empty-mask flags per
    case and label to a CSV and prints the mean and median per metric with the number of misses (distance
    means and medians count a miss as the image diagonal).
    """
    from tqdm import tqdm

    from segbench.atomic import atomic_write_text
    from segbench.evaluation import complete_labels, evaluate_pair, match_cases, summarize

    if not tolerance_mm >= 0:
        raise ConfigError(f"--tolerance-mm {tolerance_mm} must be a non-negative number of millimetres")
    labels = _parse_labels(labels_text)
    out = out if out is not None else pred_dir / METRICS_FILE  # named like a run's per-case table
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")

    pairs = match_cases(pred_dir, gt_dir, pred_suffix=pred_suffix)
    results = [
        evaluate_pair(pair, labels=labels, tolerance_mm=tolerance_mm)
        for pair in tqdm(pairs, desc="evaluate", unit="case")
    ]
    frame = complete_labels(results, tolerance_mm=tolerance_mm)
    atomic_write_text(out, frame.to_csv(index=False))

    summary = summarize(frame)
    click.echo(f"{len(pairs)} cases scored; per-case metrics written to {out}")
    for label, group in summary.groupby("label", sort=True):
        misses = int(group["misses"].iloc[0])
        click.echo(f"label {label}: {int(group['cases'].iloc[0])} cases, {misses} miss(es)")
        for record in group.itertuples(index=False):
            unit = f" {record.unit}" if record.unit else ""
            click.echo(f"  {record.metric:<5} mean {record.mean:9.4f}{unit:3}  median {record.median:9.4f}{unit}")
    if summary.empty:
        click.echo("no foreground label in any prediction or reference; give --labels to score absent labels")
