"""`segbench evaluate PRED_DIR GT_DIR` (any folder of predicted masks) and `segbench evaluate RUN_DIR` (a run's
out-of-fold predictions, one merged folder per model)."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from segbench.cli.group import main
from segbench.errors import ConfigError
from segbench.rundir import (
    EVALUATION_FILE,
    EVALUATION_POSTPROCESSED_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    OOF_PREDICTIONS_DIR,
)

DEFAULT_TOLERANCE_MM = 2.0  # a folder of predictions: nnU-Net-style default; a run uses its own --tolerance-mm


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
@click.argument("pred_dir", metavar="PRED_DIR|RUN_DIR", type=click.Path(path_type=Path))
@click.argument("gt_dir", metavar="[GT_DIR]", required=False, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Per-case CSV to write (one row per case and label). Default: PRED_DIR/{METRICS_FILE}, or for a run "
    f"RUN_DIR/{OOF_PREDICTIONS_DIR}/{EVALUATION_FILE} (with a model column); a run's postprocessed predictions go "
    f"beside it, to {EVALUATION_POSTPROCESSED_FILE} (with --out FILE.csv: FILE_postprocessed.csv).",
)
@click.option(
    "--tolerance-mm",
    type=float,
    default=None,
    help=f"NSD (surface Dice) tolerance in mm. Default: {DEFAULT_TOLERANCE_MM:g}, or for a RUN_DIR the run's own.",
)
@click.option(
    "--labels",
    "labels_text",
    default=None,
    help="Labels to score, e.g. 1,2. Default: every label found, or for a RUN_DIR the run's dataset labels.",
)
@click.option(
    "--pred-suffix",
    default="",
    help="Text between case id and extension in prediction names, e.g. _seg for la_003_seg.nii.gz.",
)
@click.option(
    "--subset",
    is_flag=True,
    help="Score only the references that have a prediction (default: every reference needs one). Always on for a "
    "RUN_DIR, whose failed jobs have no predictions.",
)
def evaluate(
    pred_dir: Path,
    gt_dir: Path | None,
    out: Path | None,
    tolerance_mm: float | None,
    labels_text: str | None,
    pred_suffix: str,
    subset: bool,
) -> None:
    """Score predicted label maps in PRED_DIR against references in GT_DIR (matched by case id), or a run's
    out-of-fold predictions: `segbench evaluate RUN_DIR` scores RUN_DIR/predictions/<model>/ of every model
    against the run's dataset, as they are and after the model's postprocessing (the decision stored in the run, or
    decided now when its folds are all done but the run holds none).

    Writes every metric of the catalogue (dice, hd, hd95, assd, nsd, ...), volumes and empty-mask flags per
    case and label to a CSV and prints the mean and median per metric with the number of misses (distance
    means and medians count a miss as the image diagonal, as in the report).
    """
    import pandas as pd

    from segbench.atomic import atomic_write_text

    if tolerance_mm is not None and not tolerance_mm >= 0:
        raise ConfigError(f"--tolerance-mm {tolerance_mm} must be a non-negative number of millimetres")
    labels = _parse_labels(labels_text)
    if not pred_dir.is_dir():
        raise ConfigError(f"PRED_DIR {pred_dir} does not exist or is not a folder; pass the folder of predictions")
    run_mode = (pred_dir / MANIFEST_FILE).is_file()
    if run_mode:
        tolerance_mm, labels = _run_settings(pred_dir, tolerance_mm, labels)
    elif tolerance_mm is None:
        tolerance_mm = DEFAULT_TOLERANCE_MM
    if gt_dir is None and not run_mode:
        raise ConfigError(f"{pred_dir} holds no {MANIFEST_FILE}: give GT_DIR (the reference label folder) too")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    processed: dict = {}
    if run_mode:
        frames = _evaluate_run(pred_dir, gt_dir, labels=labels, tolerance_mm=tolerance_mm)
        processed = _evaluate_run(pred_dir, gt_dir, labels=labels, tolerance_mm=tolerance_mm, postprocessed=True)
        frame = pd.concat(frames.values(), ignore_index=True)
        from segbench.rundir import evaluation_path, postprocessed_evaluation_path

        processed_out = out.with_name(f"{out.stem}_postprocessed{out.suffix}") if out else None
        out = out or evaluation_path(pred_dir)
        processed_out = processed_out or postprocessed_evaluation_path(pred_dir)
    else:
        frames = {None: _evaluate_folder(pred_dir, gt_dir, labels=labels, tolerance_mm=tolerance_mm,
                                         pred_suffix=pred_suffix, subset=subset)}  # fmt: skip
        frame = frames[None]
        out = out or pred_dir / METRICS_FILE  # named like a run's per-case table
    atomic_write_text(out, frame.to_csv(index=False))
    click.echo(
        f"{frame['case_id'].nunique() if not frame.empty else 0} cases scored; per-case metrics written to {out}"
    )
    for model, part in frames.items():
        _print_summary(part, model=model, labels=labels)
        if model in processed:
            _print_summary(processed[model], model=processed[model].attrs["title"], labels=labels)
    if processed:
        atomic_write_text(processed_out, pd.concat(processed.values(), ignore_index=True).to_csv(index=False))
        click.echo(f"postprocessed predictions' per-case metrics written to {processed_out}")


def _evaluate_folder(pred_dir: Path, gt_dir: Path, *, labels, tolerance_mm: float, pred_suffix: str, subset: bool,
                     postprocess=None):  # fmt: skip
    """The per-case table of one prediction folder (a progress bar on a terminal, closed before anything prints)."""
    from tqdm.auto import tqdm

    from segbench.evaluation import complete_labels, evaluate_pair, match_cases

    pairs = match_cases(pred_dir, gt_dir, pred_suffix=pred_suffix, subset=subset)
    desc = f"evaluate {pred_dir.name}" + (" postprocessed" if postprocess else "")
    with tqdm(pairs, desc=desc, unit="case", leave=False, disable=None) as bar:
        results = [evaluate_pair(pair, labels=labels, tolerance_mm=tolerance_mm, postprocess=postprocess)
                   for pair in bar]  # fmt: skip
    return complete_labels(results, tolerance_mm=tolerance_mm)


def _evaluate_run(run_dir: Path, gt_dir: Path | None, *, labels, tolerance_mm: float, postprocessed: bool = False):
    """model → per-case table (with a ``model`` column) of every merged out-of-fold prediction folder of a run; with
    ``postprocessed``, of the predictions after each model's postprocessing (models without a decision are left out,
    with a note; each table's ``attrs["title"]`` says what was applied)."""
    from segbench import results, rundir
    from segbench.errors import DatasetError, RunDirectoryError
    from segbench.postprocessing import apply_decision
    from segbench.run_postprocessing import current_decision

    manifest = results.load_manifest(run_dir)
    gt_dir = gt_dir or Path((manifest.get("dataset") or {}).get("path", "")) / "labelsTr"
    results.link_oof_predictions(run_dir, results.scan_results(run_dir).results)  # up to date with the job folders
    models = [m for m in manifest.get("models", []) if rundir.oof_predictions_dir(run_dir, m).is_dir()]
    if not models:
        raise RunDirectoryError(f"{run_dir} has no finished job with predictions yet; nothing to evaluate")
    frames = {}
    for model in models:
        postprocess, title = None, model
        if postprocessed:
            try:
                decision, origin = current_decision(run_dir, model)
            except DatasetError as exc:  # the run's dataset moved: the raw scores above still stand
                decision, origin = None, f"the run's dataset cannot be read: {exc}"
            if decision is None:
                click.echo(f"{model}: no postprocessing decision ({origin}); only its raw predictions are scored")
                continue
            postprocess = functools.partial(apply_decision, decision=decision)
            origin = "stored decision" if origin == "stored" else "decided now, not stored"
            title = f"{model} postprocessed ({decision.describe()}; {origin})"
        frame = _evaluate_folder(rundir.oof_predictions_dir(run_dir, model), gt_dir, labels=labels,
                                 tolerance_mm=tolerance_mm, pred_suffix="", subset=True,
                                 postprocess=postprocess)  # fmt: skip
        frame.insert(0, "model", model)
        frame.attrs["title"] = title
        frames[model] = frame
    return frames


def _run_settings(run_dir: Path, tolerance_mm: float | None, labels: tuple[int, ...] | None):
    """A run's NSD tolerance and labels unless given, printed with where they come from: with both from the run the
    numbers are the report's."""
    from segbench import results

    manifest = results.load_manifest(run_dir)
    stored = (manifest.get("config") or {}).get("tolerance_mm")
    names = {int(value): name for value, name in ((manifest.get("dataset") or {}).get("labels") or {}).items()}
    if tolerance_mm is None:
        tolerance_mm = float(stored) if stored is not None else DEFAULT_TOLERANCE_MM
        origin = "the run's --tolerance-mm" if stored is not None else "default: the run recorded none"
    else:
        origin = "--tolerance-mm" + (f"; the run used {float(stored):g} mm, so NSD differs from its report"
                                     if stored is not None and float(stored) != tolerance_mm else "")  # fmt: skip
    if labels is None:
        labels = tuple(sorted(names)) or None
        label_origin = "the run's dataset"
    else:
        label_origin = "--labels"
    shown = ", ".join(f"{v} ({names[v]})" if v in names else str(v) for v in labels or ()) or "every label found"
    click.echo(f"NSD tolerance {tolerance_mm:g} mm ({origin}); labels {shown} ({label_origin})")
    return tolerance_mm, labels


def _print_summary(frame, *, model: str | None, labels: tuple[int, ...] | None) -> None:
    from segbench.evaluation import absent_labels, summarize

    summary = summarize(frame)
    prefix = f"{model}: " if model else ""
    for label, group in summary.groupby("label", sort=True):
        misses = int(group["misses"].iloc[0])
        click.echo(f"{prefix}label {label}: {int(group['cases'].iloc[0])} cases, {misses} miss(es)")
        for record in group.itertuples(index=False):
            unit = f" {record.unit}" if record.unit else ""
            click.echo(f"  {record.metric:<5} mean {record.mean:9.4f}{unit:3}  median {record.median:9.4f}{unit}")
    if summary.empty:
        click.echo(f"{prefix}no foreground label in any prediction or reference; give --labels to score absent labels")
    for label in absent_labels(frame, labels or ()):
        click.echo(f"warning: --labels names label {label}, which is in no prediction and no reference; check --labels",
                   err=True)  # fmt: skip
