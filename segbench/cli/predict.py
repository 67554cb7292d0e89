"""`segbench predict RUN_DIR --model NAME (INPUT | --test) --out OUT`: new images segmented by a fold ensemble."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main
from segbench.errors import ConfigError
from segbench.rundir import TEST_METRICS_FILE


def _parse_folds(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        folds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        folds = ()
    if not folds or any(fold < 0 for fold in folds):
        raise ConfigError(f"--folds {text!r} must be comma-separated fold numbers, e.g. --folds 0,2")
    return folds


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("input_dir", metavar="[INPUT]", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model", required=True, help="The run's model whose fold networks predict (its name in the run's tables)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the segmentations (<case_id>.nii.gz; created if missing).")  # fmt: skip
@click.option("--test", "use_test", is_flag=True, help="Segment the test cases of the run's dataset (its imagesTs).")
@click.option(
    "--folds",
    "folds_text",
    default=None,
    help="Folds whose networks form the ensemble, e.g. 0,2. Default: every fold (all must be finished).",
)
@click.option(
    "--mirror/--no-mirror", default=None, help="Mirroring test-time augmentation.  [default: the run's setting]"
)
@click.option(
    "--save-probabilities",
    is_flag=True,
    help="Also write <case_id>.npz with the class probabilities (K, D, H, W) on the input's grid.",
)
@click.option(
    "--postprocessing/--no-postprocessing",
    default=True,
    help="Apply the model's postprocessing decided on its folds (see the report).  [default: on]",
)
@click.option(
    "--evaluate",
    is_flag=True,
    help="With --test: score the segmentations against the dataset's labelsTs/ and keep the scores in the run "
    f"({TEST_METRICS_FILE}, a report section of its own, apart from the cross-validation).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def predict(
    run_dir: Path,
    input_dir: Path | None,
    model: str,
    out_dir: Path,
    use_test: bool,
    folds_text: str | None,
    mirror: bool | None,
    save_probabilities: bool,
    postprocessing: bool,
    evaluate: bool,
    device: str,
) -> None:
    """Segment the images in INPUT (an MSD or nnU-Net imagesTs folder) with the ensemble of MODEL's fold networks in
    RUN_DIR: the run's preprocessing and inference settings, the networks' logits averaged, the result taken back to
    each input's grid, the model's postprocessing applied, and written with the input's affine and header."""
    from segbench.predict import input_cases, predict_cases

    if (input_dir is None) == (not use_test):
        raise ConfigError("give either INPUT (a folder of images) or --test (the run's test cases), not both, not none")
    folds = _parse_folds(folds_text)
    if evaluate and not use_test:
        raise ConfigError("--evaluate scores the run's test cases against their labelsTs/: use it with --test")
    if use_test:
        cases = _test_cases(run_dir)
        if evaluate:  # before any prediction: a missing label should not cost the predictions first
            from segbench.held_out import labels_of_test_cases

            labels_of_test_cases(_dataset(run_dir), [case.case_id for case in cases])
    else:
        cases = input_cases(input_dir, channels=_channel_count(run_dir))
    written = predict_cases(run_dir, model=model, cases=cases, out_dir=out_dir, folds=folds, mirror=mirror,
                            save_probabilities=save_probabilities, postprocess=postprocessing, device=device,
                            progress=True)  # fmt: skip
    click.echo(f"{len(written)} segmentation(s) of {model} written to {out_dir}")
    if evaluate:
        _evaluate(run_dir, model, cases, written, folds=folds, postprocessed=postprocessing)


def _evaluate(run_dir: Path, model: str, cases, written, *, folds, postprocessed: bool) -> None:
    from segbench.evaluation import summarize
    from segbench.held_out import evaluate_test_predictions
    from segbench.predict import ensemble_members

    used = sorted({member.fold for member in ensemble_members(run_dir, model, folds=folds)})
    frame = evaluate_test_predictions(
        run_dir, model=model, predictions={case.case_id: path for case, path in zip(cases, written, strict=True)},
        folds=used, postprocessed=postprocessed,
    )  # fmt: skip
    summary = summarize(frame.drop(columns=["model", "folds", "postprocessed", "label_name"]))
    for row in summary[summary["metric"].isin(["dice", "hd95", "nsd"])].itertuples():
        click.echo(f"test set, label {row.label}: {row.metric} mean {row.mean:.4g}, median {row.median:.4g} "
                   f"({row.cases} cases, {row.misses} misses)")  # fmt: skip
    from segbench.rundir import test_metrics_path

    click.echo(f"per-case test metrics kept in {test_metrics_path(run_dir)} (the report shows them apart)")


def _dataset(run_dir: Path):
    from segbench import results
    from segbench.data.dataset import load_dataset
    from segbench.rundir import MANIFEST_FILE

    if not (run_dir / MANIFEST_FILE).is_file():
        raise ConfigError(f"{run_dir} holds no segbench run ({MANIFEST_FILE} is missing); pass a run folder")
    return load_dataset(results.load_manifest(run_dir)["dataset"]["path"])


def _channel_count(run_dir: Path) -> int:
    return len(_dataset(run_dir).channels)


def _test_cases(run_dir: Path):
    dataset = _dataset(run_dir)
    if not dataset.test:
        raise ConfigError(f"the run's dataset {dataset.root} lists no test cases; pass a folder of images as INPUT")
    return list(dataset.test)
