"""`segbench predict RUN_DIR --model NAME (INPUT | --test) --out OUT`: new images segmented by a fold ensemble."""

from __future__ import annotations

from pathlib import Path

import click

from segbench.cli.group import main
from segbench.errors import ConfigError


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
    device: str,
) -> None:
    """Segment the images in INPUT (an MSD or nnU-Net imagesTs folder) with the ensemble of MODEL's fold networks in
    RUN_DIR: the run's preprocessing and inference settings, the networks' logits averaged, the result taken back to
    each input's grid, the model's postprocessing applied, and written with the input's affine and header."""
    from segbench.predict import input_cases, predict_cases

    if (input_dir is None) == (not use_test):
        raise ConfigError("give either INPUT (a folder of images) or --test (the run's test cases), not both, not none")
    folds = _parse_folds(folds_text)
    if use_test:
        cases = _test_cases(run_dir)
    else:
        cases = input_cases(input_dir, channels=_channel_count(run_dir))
    written = predict_cases(run_dir, model=model, cases=cases, out_dir=out_dir, folds=folds, mirror=mirror,
                            save_probabilities=save_probabilities, postprocess=postprocessing, device=device,
                            progress=True)  # fmt: skip
    click.echo(f"{len(written)} segmentation(s) of {model} written to {out_dir}")


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
