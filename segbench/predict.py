"""A finished model used on new images: the ensemble of its fold networks, as nnU-Net predicts (``segbench predict``).

For every input case: the run's own preprocessing (its spacing or plan, its normalisation), a sliding-window pass of
each fold network with the run's inference settings, the logits averaged over the networks (nnU-Net averages logits
the same way), the scores taken back to the input's voxel grid, the run's postprocessing decision for the model applied
when the run made one, and a NIfTI label map written with the input's affine and header.

A member network is the final checkpoint of a ``done`` job. Its weights must be the ones that made the job's
out-of-fold predictions (``predictions.json`` records their digest): an ensemble of other weights would not be the
model the report scored, so it is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from segbench import rundir
from segbench.errors import ConfigError, DatasetError

__all__ = ["EnsembleMember", "ensemble_members", "input_cases", "predict_cases"]

log = logging.getLogger(__name__)

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
PROBABILITIES_SUFFIX = ".npz"


@dataclass(frozen=True)
class EnsembleMember:
    """One finished job of the model: its (fold, repeat) and its job folder."""

    fold: int
    repeat: int
    folder: Path
    deep_supervision: bool


def ensemble_members(run_dir: str | Path, model: str, *, folds: Sequence[int] | None = None) -> list[EnsembleMember]:
    """The finished jobs of ``model`` whose networks form the ensemble (every repeat of each selected fold).

    Args:
        run_dir: a run directory.
        model: a model of the run (its trained name, as in ``jobs.csv``).
        folds: the folds to use; ``None``: every fold of the run, which must all be finished.

    Raises:
        ConfigError: no such model in the run, a fold outside the run, or a selected fold without a finished job
            (the message names them and the way out: ``--resume`` the run, or ``--folds`` with finished ones).
    """
    from segbench import results

    run_dir = Path(run_dir)
    grid = results.expected_grid(run_dir)  # (model, fold, repeat) of every job the run asked for
    models = sorted({m for m, _, _ in grid})
    if model not in models:
        raise ConfigError(f"{run_dir} has no model {model!r}; its models are {', '.join(models)}")
    run_folds = sorted({f for m, f, _ in grid if m == model})
    selected = run_folds if folds is None else sorted(set(int(f) for f in folds))
    outside = [f for f in selected if f not in run_folds]
    if outside:
        raise ConfigError(f"--folds {','.join(map(str, outside))}: the run has folds {_folds_text(run_folds)} only")
    scan = results.scan_results(run_dir)
    done = {(r.fold, r.repeat): r for r in scan.results if r.model == model and r.status == "done"}
    wanted = [(f, r) for m, f, r in grid if m == model and f in selected]
    unfinished = sorted({f for f, r in wanted if (f, r) not in done})
    if unfinished:
        finished = sorted({f for f in selected if f not in unfinished})
        way_out = f"pass --folds {_folds_text(finished)} to use the finished ones" if finished else "no fold is done"
        raise ConfigError(
            f"{model} has no finished job for fold {_folds_text(unfinished)} in {run_dir}; finish it with "
            f"`segbench run --resume --out {run_dir}`, or {way_out}"
        )
    return [
        EnsembleMember(
            fold=f,
            repeat=r,
            folder=rundir.job_dir(run_dir, done[(f, r)]),
            deep_supervision=bool(done[(f, r)].job.get("deep_supervision") or False),
        )  # fmt: skip
        for f, r in wanted
    ]


def _folds_text(folds: Sequence[int]) -> str:
    return ",".join(str(f) for f in folds)


def input_cases(folder: str | Path, *, channels: int, file_ending: str = ".nii.gz"):
    """The cases in a folder of images: nnU-Net style (``<case>_0000.nii.gz``, one 3D file per channel) or MSD style
    (one file per case, 4D channel-last for several channels). ``._*`` and ``.DS_Store`` files are skipped.

    nnU-Net style is recognised when every image name ends in a 4-digit channel suffix and every case has exactly the
    channels ``0000`` … ``channels - 1``; anything else is read MSD style.

    Returns:
        :class:`segbench.data.dataset.Case` objects (no label), sorted by case id.

    Raises:
        DatasetError: the folder does not exist or holds no image with ``file_ending``.
    """
    from segbench.data.dataset import Case, is_ignored_name

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder of images; pass the folder that holds the .nii.gz files")
    names = sorted(p.name[: -len(file_ending)] for p in folder.iterdir()
                   if p.name.endswith(file_ending) and not is_ignored_name(p.name) and p.is_file())  # fmt: skip
    if not names:
        raise DatasetError(f"{folder} holds no {file_ending} image; pass the folder of the images to segment")
    matches = [_CHANNEL_FILE.match(name) for name in names]
    by_case: dict[str, set[int]] = {}
    for match in matches:
        if match:
            by_case.setdefault(match["case"], set()).add(int(match["channel"]))
    if all(matches) and all(found == set(range(channels)) for found in by_case.values()):
        return [Case(case_id, tuple(folder / f"{case_id}_{c:04d}{file_ending}" for c in range(channels)), None)
                for case_id in sorted(by_case)]  # fmt: skip
    return [Case(name, (folder / f"{name}{file_ending}",), None) for name in names]


def predict_cases(
    run_dir: str | Path,
    *,
    model: str,
    cases: Sequence,
    out_dir: str | Path,
    folds: Sequence[int] | None = None,
    mirror: bool | None = None,
    save_probabilities: bool = False,
    postprocess: bool = True,
    device: str = "auto",
    progress: bool = False,
) -> list[Path]:
    """Segment ``cases`` with the ensemble of ``model``'s fold networks: ``<case_id>.nii.gz`` per case in ``out_dir``.

    Args:
        run_dir: the run whose networks predict.
        model: a model of the run.
        cases: :class:`segbench.data.dataset.Case` objects (e.g. from :func:`input_cases`), with as many channels as
            the run's dataset.
        out_dir: created if missing; existing files of the same names are replaced.
        folds: the folds whose networks form the ensemble (default every fold; see :func:`ensemble_members`).
        mirror: mirroring test-time augmentation; ``None`` follows the run's inference settings.
        save_probabilities: also write ``<case_id>.npz`` with ``probabilities``, ``(K, D, H, W)`` float32 class
            probabilities on the input's voxel grid (softmax; one sigmoid channel for a single-label sigmoid model).
        postprocess: apply the model's postprocessing decision (made on its folds; none while they are unfinished).
            The probabilities are never postprocessed.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: a progress bar per case (stderr).

    Returns:
        The written segmentation files, in the order of ``cases``.

    Raises:
        ConfigError: see :func:`ensemble_members`; a member's weights differ from those that made its out-of-fold
            predictions. DatasetError: an unreadable image or a channel count other than the run's.
    """
    from tqdm.auto import tqdm

    from segbench.case_predictions import weights_digest
    from segbench.job import network_plan_of_run
    from segbench.registry import network_plan_scope

    run = _RunSetup.load(run_dir, device=device, mirror=mirror)
    members = ensemble_members(run_dir, model, folds=folds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with network_plan_scope(network_plan_of_run(run.config, run_dir)):
        networks = [run.network(model, member) for member in members]
    for member, network in zip(members, networks, strict=True):
        _check_weights(member, weights_digest(network))
    log.info("%s: an ensemble of %d network(s) (folds %s)", model, len(networks),
             _folds_text(sorted({m.fold for m in members})))  # fmt: skip
    decision = run.postprocessing(model) if postprocess else None
    written = []
    for case in tqdm(cases, desc=f"predict {model}", unit="case", disable=not progress):
        written.append(_predict_one(run, networks, case, out_dir, decision, save_probabilities=save_probabilities))
    return written


@dataclass(frozen=True)
class _RunSetup:
    """What a prediction takes from the run: its config, dataset description, preprocessing and numerics."""

    run_dir: Path
    config: object
    dataset: object
    preprocess: object
    device: torch.device
    numerics: tuple[str, str]

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str, mirror: bool | None) -> _RunSetup:
        from segbench import results
        from segbench.config import config_from_dict
        from segbench.data.dataset import load_dataset
        from segbench.data.preprocess import PreprocessConfig
        from segbench.job import step_numerics
        from segbench.runner import resolve_device

        run_dir = Path(run_dir)
        if not (run_dir / rundir.MANIFEST_FILE).is_file():
            raise ConfigError(f"{run_dir} holds no segbench run ({rundir.MANIFEST_FILE} is missing); pass a run folder")
        manifest = results.load_manifest(run_dir)
        config = config_from_dict(manifest["config"])
        if mirror is not None:
            config = replace(config, inference=replace(config.inference, mirror=mirror))
        plan = None
        if getattr(config, "plans", None):
            from segbench.plans.reader import read_plan

            plan = read_plan(rundir.plans_path(run_dir), config.configuration)
        target = torch.device(resolve_device(device))
        return cls(
            run_dir=run_dir,
            config=config,
            dataset=load_dataset(manifest["dataset"]["path"]),
            preprocess=PreprocessConfig(target_spacing=config.target_spacing, plan=plan),
            device=target,
            numerics=step_numerics(config.train, target),
        )

    @property
    def out_channels(self) -> int:
        from segbench.job import out_channels_for

        return out_channels_for(self.dataset.foreground_labels, loss=self.config.train.loss)

    def network(self, model: str, member: EnsembleMember) -> torch.nn.Module:
        """The member's final weights in a freshly built network, on the device, in eval mode."""
        from segbench.checkpoints import load_latest_checkpoint
        from segbench.precision import prepare_model
        from segbench.registry import build_model

        checkpoint = load_latest_checkpoint(member.folder)
        if checkpoint is None:
            raise ConfigError(f"{member.folder} holds no checkpoint; run the job again with `segbench run --resume`")
        network = build_model(model, in_channels=len(self.dataset.channels), out_channels=self.out_channels,
                              deep_supervision=member.deep_supervision)  # fmt: skip
        network.load_state_dict(checkpoint["model"])
        network.to(self.device).eval()
        prepare_model(network, precision=self.numerics[0], memory_format=self.numerics[1], device=self.device)
        return network

    def postprocessing(self, model: str):
        """The model's postprocessing decision (:mod:`segbench.run_postprocessing`), or ``None`` while its folds are
        not all done; logged either way."""
        from segbench.run_postprocessing import current_decision

        decision, source = current_decision(self.run_dir, model)
        if decision is None:
            log.warning("%s: no postprocessing (%s): the segmentations are the ensemble's as they are", model, source)
        else:
            log.info("%s: postprocessing %s (%s)", model, decision.describe(), source)
        return decision


def _check_weights(member: EnsembleMember, digest: str) -> None:
    import json

    from segbench.case_predictions import LEDGER_FILE

    ledger = member.folder / LEDGER_FILE
    try:
        recorded = json.loads(ledger.read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        return  # a job from before the ledger existed: nothing to compare with
    if recorded != digest:
        raise ConfigError(
            f"the checkpoint in {member.folder} is not the network that made its out-of-fold predictions (weights "
            f"{digest}, predictions made by {recorded}); run the job again with `segbench run --resume`"
        )


def _predict_one(run: _RunSetup, networks, case, out_dir: Path, decision, *, save_probabilities: bool) -> Path:
    from segbench.data.preprocess import prepare_in_memory
    from segbench.postprocessing import apply_decision

    image, prepared = prepare_in_memory(case, config=run.preprocess)
    if image.shape[0] != len(run.dataset.channels):
        raise DatasetError(
            f"{case.images[0]} has {image.shape[0]} channel(s) but the run's dataset has {len(run.dataset.channels)}"
        )
    logits = _ensemble_logits(run, networks, image)
    labels = _label_values(run, _classes(logits, prepared))
    if decision is not None:
        labels = apply_decision(labels, decision)
    path = out_dir / f"{case.case_id}.nii.gz"
    _write_like(case.images[0], labels, path)
    if save_probabilities:
        probabilities = _probabilities(logits, prepared)
        np.savez_compressed(out_dir / f"{case.case_id}{PROBABILITIES_SUFFIX}", probabilities=probabilities)
    return path


def _ensemble_logits(run: _RunSetup, networks, image: np.ndarray) -> torch.Tensor:
    """``(K, *prepared shape)`` float32 logits averaged over the networks (on the CPU)."""
    from segbench.inference import sliding_window_predict

    inference, total = run.config.inference, None
    for network in networks:
        logits = sliding_window_predict(
            network, torch.from_numpy(np.asarray(image)), patch_size=tuple(run.config.train.patch_size),
            overlap=inference.overlap, batch_size=inference.batch_size, mirror=inference.mirror,
            gaussian=inference.gaussian, device=run.device, precision=run.numerics[0], memory_format=run.numerics[1],
        ).float().cpu()  # fmt: skip
        total = logits.clone() if total is None else total.add_(logits)  # an inference tensor: not in place
    return total / len(networks)


def _classes(logits: torch.Tensor, prepared) -> np.ndarray:
    from segbench.data.preprocess import labels_in_source_geometry

    return labels_in_source_geometry(logits, prepared)


def _label_values(run: _RunSetup, classes: np.ndarray) -> np.ndarray:
    values = np.asarray((0, *run.dataset.foreground_labels), dtype=np.uint8)
    return values[classes]


def _probabilities(logits: torch.Tensor, prepared) -> np.ndarray:
    from segbench.data.preprocess import scores_in_source_geometry

    scores = torch.sigmoid(logits) if logits.shape[0] == 1 else torch.softmax(logits, dim=0)
    return scores_in_source_geometry(scores, prepared).astype(np.float32)


def _write_like(source: Path, labels: np.ndarray, path: Path) -> Path:
    """Write ``labels`` with the affine and header of the image ``source`` (3D; the data type uint8)."""
    from segbench.atomic import atomic_write_bytes
    from segbench.data.nifti import nifti_bytes

    reference = nib.load(str(source))
    header = reference.header.copy()
    header.set_data_shape(labels.shape)
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image = nib.Nifti1Image(np.ascontiguousarray(labels, dtype=np.uint8), reference.affine, header=header)
    return atomic_write_bytes(path, nifti_bytes(image, path))
