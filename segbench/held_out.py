"""A labelled held-back test set (``labelsTs/``), scored apart from the cross-validation by ``segbench predict``.

The test cases never take part in training, folds, postprocessing decisions or statistics. Their scores are stored in
``RUN_DIR/test_metrics.csv`` (metrics.csv's metric columns per case and label, plus ``model``, the ensemble's folds and
whether the model's postprocessing was applied); the report shows them in a section of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from segbench import rundir
from segbench.errors import DatasetError

__all__ = ["TEST_LABELS_DIR", "evaluate_test_predictions", "load_test_metrics", "labels_of_test_cases"]

log = logging.getLogger(__name__)

TEST_LABELS_DIR = "labelsTs"


def labels_of_test_cases(dataset, case_ids: Sequence[str]) -> dict[str, Path]:
    """``labelsTs/<case_id><ending>`` of each test case of ``dataset`` (a :class:`segbench.data.dataset.DatasetSpec`).

    Raises:
        DatasetError: the dataset has no ``labelsTs/`` or some cases have no label there (named).
    """
    folder = Path(dataset.root) / TEST_LABELS_DIR
    paths = {case_id: folder / f"{case_id}{dataset.file_ending}" for case_id in case_ids}
    missing = [case_id for case_id, path in paths.items() if not path.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(
            f"--evaluate needs the test cases' labels in {folder}, but {shown} ha{'s' if len(missing) == 1 else 've'} "
            "none; add them there (one label map per test image, named like it) or predict without --evaluate"
        )
    return paths


def evaluate_test_predictions(
    run_dir: str | Path, *, model: str, predictions: dict[str, Path], folds: Sequence[int], postprocessed: bool
) -> pd.DataFrame:
    """Score ``model``'s test-set segmentations and store them in ``RUN_DIR/test_metrics.csv`` (replacing the model's
    earlier rows).

    Args:
        run_dir: the run whose dataset holds the test labels.
        model: the model (or ensemble) that predicted.
        predictions: case id → segmentation file.
        folds: the folds whose networks predicted (recorded as ``folds``, e.g. ``"0,1,2,3,4"``).
        postprocessed: whether the model's postprocessing was applied (recorded).

    Returns:
        The model's rows: ``model, folds, postprocessed, case_id`` and the metric columns of ``metrics.csv``.

    Raises:
        DatasetError: a missing test label (see :func:`labels_of_test_cases`) or a segmentation whose geometry differs
            from its label's.
    """
    from segbench import results
    from segbench.atomic import atomic_write_text
    from segbench.config import config_from_dict
    from segbench.data.dataset import load_dataset
    from segbench.evaluation import CasePair, evaluate_pair

    manifest = results.load_manifest(run_dir)
    config, dataset = config_from_dict(manifest["config"]), load_dataset(manifest["dataset"]["path"])
    labels = labels_of_test_cases(dataset, list(predictions))
    rows = []
    for case_id, path in predictions.items():
        scored = evaluate_pair(CasePair(case_id, Path(path), labels[case_id]), labels=dataset.foreground_labels,
                               tolerance_mm=config.tolerance_mm)  # fmt: skip
        names = dataset.labels
        rows += [{"model": model, "folds": ",".join(map(str, folds)), "postprocessed": postprocessed,
                  **row, "label_name": names.get(row["label"], "")} for row in scored.rows]  # fmt: skip
    frame = pd.DataFrame(rows)
    path = rundir.test_metrics_path(run_dir)
    earlier = load_test_metrics(run_dir)
    if not earlier.empty:
        frame = pd.concat([earlier[earlier["model"] != model], frame], ignore_index=True)
    atomic_write_text(path, frame.to_csv(index=False))
    log.info("%d test case(s) of %s scored into %s", len(predictions), model, path)
    return frame[frame["model"] == model].reset_index(drop=True)


def load_test_metrics(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/test_metrics.csv``; empty when the run has no scored test set."""
    path = rundir.test_metrics_path(run_dir)
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"case_id": str, "folds": str})
