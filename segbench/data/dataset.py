"""Dataset readers: Medical Segmentation Decathlon (MSD) task folders and nnU-Net v2 raw folders.

Both formats are a folder with ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and optionally ``imagesTs/``.
The format is detected from dataset.json:

* **MSD** (also nnU-Net v1): ``modality`` {"0": "MRI"}, ``labels`` {"0": "background", "1": "left atrium"},
  ``training`` [{"image": "./imagesTr/la_003.nii.gz", "label": "./labelsTr/la_003.nii.gz"}, ...] and
  ``test`` ["./imagesTs/la_001.nii.gz", ...]. Multi-modal images are single 4D channel-last files.
* **nnU-Net v2 raw**: ``channel_names`` {"0": "MRI"}, ``labels`` {"background": 0, "left atrium": 1},
  ``file_ending`` ".nii.gz" and no case list: cases are found by listing ``imagesTr`` for
  ``<case>_<XXXX><file_ending>`` (one 3D file per channel) paired with ``labelsTr/<case><file_ending>``.

Paths taken from dataset.json must stay inside the dataset folder. They are checked *lexically* (after
normalising ``.`` and ``..``), not by resolving symlinks: a dataset whose ``imagesTr`` is a symlink to another
disk is legitimate, whereas ``../other/secret.nii.gz`` or ``/etc/passwd`` is refused.

macOS metadata files (``._*`` AppleDouble and ``.DS_Store``), which the public MSD tarballs contain, are
never cases; they are collected in :attr:`DatasetSpec.ignored_files` so the validator can mention them once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from segbench.data.nifti import Volume, read_image, read_label
from segbench.errors import DatasetError

log = logging.getLogger(__name__)

MSD = "msd"
NNUNET = "nnunet"
SUBFOLDERS = ("imagesTr", "labelsTr", "imagesTs")
_NIFTI_ENDINGS = (".nii.gz", ".nii")
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case of a dataset.

    Attributes:
        case_id: file name without its ending (nnU-Net: also without the ``_0000`` channel suffix).
        images: MSD: one (possibly 4D channel-last) file; nnU-Net: one 3D file per channel, in channel order.
        label: the label map, or None for test cases.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    """What dataset.json and the folder listing say about a dataset (no image has been read).

    Attributes:
        root: the dataset folder as given (not resolved, so symlinked folders keep their names).
        name: dataset.json ``name``, else the folder name.
        format: ``"msd"`` or ``"nnunet"``.
        channels: modality / channel names in channel order.
        labels: label value -> name, including 0 (background).
        training: labelled cases sorted by case id.
        test: unlabelled cases sorted by case id.
        file_ending: ``".nii.gz"`` (or whatever nnU-Net's ``file_ending`` says).
        ignored_files: ``._*`` and ``.DS_Store`` files met in the dataset folders.
    """

    root: Path
    name: str
    format: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    training: tuple[Case, ...]
    test: tuple[Case, ...]
    file_ending: str
    ignored_files: tuple[Path, ...]

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Declared label values except background (0), ascending."""
        return tuple(sorted(v for v in self.labels if v != 0))

    @property
    def dataset_json(self) -> Path:
        return self.root / "dataset.json"


def load_dataset(path: str | Path) -> DatasetSpec:
    """Read ``path/dataset.json`` (MSD or nnU-Net v2 raw, auto-detected) and list the cases.

    Only dataset.json and folder listings are read; images are checked by
    :func:`segbench.data.validate.validate_dataset`.

    Raises:
        DatasetError: the folder or dataset.json is missing, not valid JSON, lacks a required key, has a
            wrong value, lists a path outside the folder, or lists a case id twice. The message names
            dataset.json and the entry at fault.
    """
    spec, problems = parse_dataset(path)
    if problems:
        more = (
            f" ({len(problems) - 1} more problems: run `segbench data check {spec.root}`)" if len(problems) > 1 else ""
        )
        raise DatasetError(problems[0] + more)
    return spec


def parse_dataset(path: str | Path) -> tuple[DatasetSpec, tuple[str, ...]]:
    """Like :func:`load_dataset` but returns recoverable problems instead of raising on the first one.

    Recoverable problems (a bad or escaping entry, a duplicate case id) are listed, one sentence each, and
    the spec holds the cases that could be understood. Unrecoverable ones (no folder, unreadable JSON, a
    missing required key) still raise :class:`DatasetError`.
    """
    root = Path(path)
    if root.name == "dataset.json" and root.is_file():
        root = root.parent
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist or is not a folder; pass the folder holding dataset.json"
        )
    meta = _read_json(root / "dataset.json")
    ignored = _ignored_files(root)
    if "channel_names" in meta:
        return _parse_nnunet(root, meta, ignored)
    if "modality" in meta or "training" in meta:
        return _parse_msd(root, meta, ignored)
    raise DatasetError(
        f"{root / 'dataset.json'} has neither 'modality' (MSD) nor 'channel_names' (nnU-Net v2); "
        "add the one matching your folder layout"
    )


def load_case(case: Case) -> tuple[Volume, Volume | None]:
    """Read a case: image ``(C, D, H, W)`` float32 and label ``(D, H, W)`` integer (None for test cases).

    nnU-Net channel files (3D each) are stacked in channel order; MSD 4D channel-last files are moved to
    channel-first by :func:`~segbench.data.nifti.read_image`.

    Raises:
        DatasetError: a file is missing, unreadable or truncated, a label is not integral, or the channel
            files / label do not share the image's spatial shape. The message names the file.
    """
    image = read_channels(case.images)
    label = None
    if case.label is not None:
        label = read_label(case.label)
        if label.spatial_shape != image.spatial_shape:
            raise DatasetError(
                f"{case.label} has shape {label.spatial_shape} but its image {case.images[0]} has "
                f"{image.spatial_shape}; image and label must cover the same voxels"
            )
    return image, label


def read_channels(paths: tuple[Path, ...]) -> Volume:
    """Read one image file (any channel count) or several 3D channel files and stack them channel-first.

    Raises:
        DatasetError: unreadable file, a channel file that is not 3D, or channel files whose shapes differ.
    """
    first = read_image(paths[0])
    if len(paths) == 1:
        return first
    arrays = [first.array]
    for path in paths[1:]:
        vol = read_image(path)
        if vol.array.shape[0] != 1:
            raise DatasetError(f"{path} has {vol.array.shape[0]} channels; nnU-Net channel files must be 3D")
        if vol.spatial_shape != first.spatial_shape:
            raise DatasetError(
                f"{path} has shape {vol.spatial_shape} but {paths[0]} has {first.spatial_shape}; "
                "all channel files of a case must have the same shape"
            )
        arrays.append(vol.array)
    if first.array.shape[0] != 1:
        raise DatasetError(f"{paths[0]} has {first.array.shape[0]} channels; nnU-Net channel files must be 3D")
    return Volume(np.concatenate(arrays, axis=0), first.spacing, first.affine)


def dataset_fingerprint(spec: DatasetSpec) -> str:
    """A SHA-256 hex digest of dataset.json and every case file (relative path + content hash).

    Changes whenever dataset.json, any listed file's content, or the set of files changes; does not depend on
    where the folder lives or on file times. Costs one sequential read of every file (fast: no decompression).

    Raises:
        DatasetError: a listed file is missing or unreadable.
    """
    digest = hashlib.sha256()
    digest.update(_hash_file(spec.dataset_json).encode())
    files = sorted({p for case in (*spec.training, *spec.test) for p in (*case.images, case.label) if p is not None})
    for path in files:
        # The relative path is part of the digest, so renaming or moving a file changes the fingerprint.
        digest.update(b"\0" + relative_name(spec.root, path).encode() + b"\0" + _hash_file(path).encode())
    return digest.hexdigest()


def relative_name(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (lexically, so symlinked subfolders keep their names)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def is_ignored_name(name: str) -> bool:
    """True for macOS metadata files that are never cases: AppleDouble ``._*`` and ``.DS_Store``."""
    return name.startswith("._") or name == ".DS_Store"


def strip_ending(name: str, file_ending: str | None = None) -> str:
    """File name without its image ending (``la_003.nii.gz`` -> ``la_003``)."""
    for ending in (file_ending, *_NIFTI_ENDINGS):
        if ending and name.endswith(ending):
            return name[: -len(ending)]
    return name.rsplit(".", 1)[0]


# --- internals ---------------------------------------------------------------------------------------------


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DatasetError(f"cannot read {path} to fingerprint the dataset ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"{path} does not exist; a dataset folder needs a dataset.json (MSD or nnU-Net v2)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} ({exc})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def _ignored_files(root: Path) -> tuple[Path, ...]:
    found = [p for p in _listdir(root) if is_ignored_name(p.name)]
    for sub in SUBFOLDERS:
        found += [p for p in _listdir(root / sub) if is_ignored_name(p.name)]
    return tuple(sorted(found))


def _listdir(folder: Path) -> list[Path]:
    # is_dir() follows symlinks, which is what we want: imagesTr may live on another disk.
    if not folder.is_dir():
        return []
    return sorted(folder.iterdir())


def _require(meta: dict, key: str, kind: type, json_path: Path, fmt: str):
    if key not in meta:
        need = "modality, labels and training" if fmt == MSD else "channel_names, labels and file_ending"
        raise DatasetError(f"{json_path} has no '{key}' entry; an {fmt.upper()} dataset.json needs {need}")
    value = meta[key]
    if not isinstance(value, kind):
        raise DatasetError(f"{json_path}: '{key}' must be a JSON {_json_kind(kind)}, not {type(value).__name__}")
    return value


def _json_kind(kind: type) -> str:
    return {dict: "object", list: "list", str: "string"}.get(kind, kind.__name__)


def _channels(mapping: dict, key: str, json_path: Path) -> tuple[str, ...]:
    try:
        index = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise DatasetError(f'{json_path}: \'{key}\' keys must be channel numbers "0", "1", ...') from None
    if sorted(index) != list(range(len(index))) or not index:
        raise DatasetError(f"{json_path}: '{key}' must number channels 0..N-1 without gaps, got {sorted(index)}")
    return tuple(index[i] for i in range(len(index)))


def _check_labels(labels: dict[int, str], json_path: Path) -> dict[int, str]:
    if any(v < 0 for v in labels):
        raise DatasetError(f"{json_path}: 'labels' values must be non-negative integers, got {sorted(labels)}")
    if 0 not in labels:
        raise DatasetError(f"{json_path}: 'labels' must declare 0 (background)")
    return dict(sorted(labels.items()))


def safe_join(root: Path, entry: object, where: str, json_path: Path) -> Path:
    """``root / entry`` for a relative path from dataset.json that stays inside ``root`` (checked lexically).

    Raises:
        DatasetError: ``entry`` is not a string, is absolute, or escapes ``root`` with ``..``.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetError(f"{json_path}: {where} must be a relative file path, got {entry!r}")
    text = entry.replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(entry).is_absolute() or PureWindowsPath(entry).drive:
        raise DatasetError(f"{json_path}: {where} '{entry}' is an absolute path; paths must be relative to {root}")
    normal = posixpath.normpath(text)
    if normal == ".":
        raise DatasetError(f"{json_path}: {where} '{entry}' names the dataset folder itself, not a file")
    if normal == ".." or normal.startswith("../"):
        raise DatasetError(f"{json_path}: {where} '{entry}' points outside the dataset folder {root}; refusing it")
    return root.joinpath(*normal.split("/"))


def _parse_msd(root: Path, meta: dict, ignored: tuple[Path, ...]) -> tuple[DatasetSpec, tuple[str, ...]]:
    json_path = root / "dataset.json"
    channels = _channels(_require(meta, "modality", dict, json_path, MSD), "modality", json_path)
    raw_labels = _require(meta, "labels", dict, json_path, MSD)
    try:
        labels = {int(k): str(v) for k, v in raw_labels.items()}
    except (TypeError, ValueError):
        raise DatasetError(f'{json_path}: MSD \'labels\' keys must be label values such as "0", "1"') from None
    labels = _check_labels(labels, json_path)
    entries = _require(meta, "training", list, json_path, MSD)
    test_entries = meta.get("test", [])
    if not isinstance(test_entries, list):
        raise DatasetError(f"{json_path}: 'test' must be a JSON list of image paths")
    problems: list[str] = []
    training: list[Case] = []
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise DatasetError(f"{json_path}: training[{i}] must be an object with 'image' and 'label' paths")
            image = safe_join(root, entry["image"], f"training[{i}].image", json_path)
            label = safe_join(root, entry["label"], f"training[{i}].label", json_path)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        training.append(Case(strip_ending(image.name), (image,), label))
    test: list[Case] = []
    for i, entry in enumerate(test_entries):
        # nnU-Net v1 wrote test entries as plain strings; some tools write {"image": ...}.
        value = entry.get("image") if isinstance(entry, dict) else entry
        try:
            image = safe_join(root, value, f"test[{i}]", json_path)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        test.append(Case(strip_ending(image.name), (image,), None))
    names = [c.images[0].name for c in (*training, *test)]
    file_ending = ".nii" if names and all(n.endswith(".nii") for n in names) else ".nii.gz"
    problems += _duplicate_problems(training, test, json_path)
    spec = DatasetSpec(
        root=root,
        name=str(meta.get("name") or root.name),
        format=MSD,
        channels=channels,
        labels=labels,
        training=tuple(sorted(training, key=lambda c: c.case_id)),
        test=tuple(sorted(test, key=lambda c: c.case_id)),
        file_ending=file_ending,
        ignored_files=ignored,
    )
    return spec, tuple(problems)


def _parse_nnunet(root: Path, meta: dict, ignored: tuple[Path, ...]) -> tuple[DatasetSpec, tuple[str, ...]]:
    json_path = root / "dataset.json"
    channels = _channels(_require(meta, "channel_names", dict, json_path, NNUNET), "channel_names", json_path)
    raw_labels = _require(meta, "labels", dict, json_path, NNUNET)
    labels: dict[int, str] = {}
    for name, value in raw_labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            # nnU-Net region-based training declares lists of values; segbench compares per label value.
            raise DatasetError(
                f"{json_path}: label '{name}' is {value!r}; segbench needs one integer value per label "
                "(region-based labels are not supported)"
            )
        if value in labels:
            raise DatasetError(f"{json_path}: labels '{labels[value]}' and '{name}' share the value {value}")
        labels[value] = str(name)
    labels = _check_labels(labels, json_path)
    file_ending = _require(meta, "file_ending", str, json_path, NNUNET)
    if not file_ending.startswith(".") or "/" in file_ending or "\\" in file_ending:
        raise DatasetError(f"{json_path}: 'file_ending' must look like \".nii.gz\", got {file_ending!r}")
    if "dataset" in meta:
        raise DatasetError(
            f"{json_path} lists cases under 'dataset'; segbench reads the standard imagesTr/labelsTr layout only, "
            "so move the files into imagesTr/labelsTr and remove the 'dataset' entry"
        )
    n = len(channels)
    training = [
        Case(
            case_id,
            _channel_paths(root / "imagesTr", case_id, n, file_ending),
            root / "labelsTr" / f"{case_id}{file_ending}",
        )
        for case_id in _nnunet_case_ids(root / "imagesTr", file_ending)
    ]
    test = [
        Case(case_id, _channel_paths(root / "imagesTs", case_id, n, file_ending), None)
        for case_id in _nnunet_case_ids(root / "imagesTs", file_ending)
    ]
    spec = DatasetSpec(
        root=root,
        name=str(meta.get("name") or root.name),
        format=NNUNET,
        channels=channels,
        labels=labels,
        training=tuple(training),
        test=tuple(test),
        file_ending=file_ending,
        ignored_files=ignored,
    )
    return spec, tuple(_duplicate_problems(training, test, json_path))


def _channel_paths(folder: Path, case_id: str, n: int, file_ending: str) -> tuple[Path, ...]:
    return tuple(folder / f"{case_id}_{c:04d}{file_ending}" for c in range(n))


def _nnunet_case_ids(folder: Path, file_ending: str) -> list[str]:
    # A case exists if any of its channel files exists; missing channels are then reported as missing files,
    # and files not following <case>_<XXXX><ending> are reported by the validator as not belonging to a case.
    ids = set()
    for path in _listdir(folder):
        if is_ignored_name(path.name) or not path.name.endswith(file_ending):
            continue
        match = _CHANNEL_SUFFIX.match(path.name[: -len(file_ending)])
        if match:
            ids.add(match["case"])
    return sorted(ids)


def _duplicate_problems(training: list[Case], test: list[Case], json_path: Path) -> list[str]:
    counts = Counter(c.case_id for c in (*training, *test))
    problems = []
    for case_id, count in sorted(counts.items()):
        if count > 1:
            files = ", ".join(
                relative_name(json_path.parent, c.images[0]) for c in (*training, *test) if c.case_id == case_id
            )
            problems.append(f"{json_path} lists case id '{case_id}' {count} times ({files}); case ids must be unique")
    return problems
