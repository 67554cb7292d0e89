"""What segbench keeps in its cache folder, how big it is, and removing it by dataset or by age.

The cache root (:func:`segbench.paths.cache_root`) holds generated synthetic datasets (``synthetic-*`` folders) and
the preprocessing cache (``preprocessed/<case_id>-<key>/``, see :mod:`segbench.data.preprocess`). A preprocessed
entry's name does not say which dataset it came from, so every run records its dataset's entries in
``preprocessed/.index/<dataset-hash>.json`` (name, resolved path, entry folders, last use). Entries no index names are
listed under the dataset ``(unknown)``.

An entry's age is the time since it was last used: the later of its folder's modification time and the last use any
index records for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from segbench.atomic import atomic_write_json
from segbench.paths import cache_root, preprocessed_cache

log = logging.getLogger(__name__)

__all__ = [
    "CacheEntry",
    "cache_bytes",
    "cache_state",
    "folder_bytes",
    "format_size",
    "list_entries",
    "record_use",
    "remove_entries",
]

INDEX_DIR = ".index"
#: Bytes of an ``.npy`` header (numpy writes 128 for arrays of this rank) and of a ``case.json``, per cached case.
_NPY_HEADER, _CASE_JSON = 128, 1024
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class CacheEntry:
    """One removable thing in the cache.

    Attributes:
        kind: ``"dataset"`` (a generated synthetic dataset) or ``"preprocessed"`` (one prepared case).
        dataset: the dataset's name (``(unknown)`` for a prepared case no run recorded).
        dataset_path: the dataset folder, or ``""`` when unknown.
        path: the entry's folder.
        size_bytes: bytes of its files.
        last_used: POSIX time of its last use.
    """

    kind: str
    dataset: str
    dataset_path: str
    path: Path
    size_bytes: int
    last_used: float

    def age_days(self, now: float | None = None) -> float:
        return max(0.0, ((now or time.time()) - self.last_used) / 86400)


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed while walking
                pass
    return total


def format_size(num_bytes: float) -> str:
    """``"45.1 MB"``: decimal units, as ``du --si`` and file managers show them."""
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


def cache_bytes(geometry: Iterable) -> int:
    """Bytes the preprocessing cache holds for labelled cases of this geometry (:class:`segbench.geometry.
    CaseGeometry`): float32 image, uint8 label, ``case.json``."""
    return sum(case.channels * case.voxels * 4 + case.voxels + 2 * _NPY_HEADER + _CASE_JSON for case in geometry)


def cache_state(dataset, config, preprocessed: Path, geometry: Iterable) -> dict:
    """What the manifest records about the cache: ``path``, ``cases``, ``cached`` (already prepared), ``bytes``
    (this dataset's entries once all are prepared)."""
    from segbench.data.preprocess import case_folder

    cached = sum((case_folder(case, config, preprocessed) / "case.json").is_file() for case in dataset.training)
    return {"path": os.fspath(preprocessed), "cases": len(dataset.training), "cached": int(cached),
            "bytes": cache_bytes(geometry)}  # fmt: skip


def _index_path(preprocessed: Path, dataset_path: str | os.PathLike) -> Path:
    digest = hashlib.sha256(os.fspath(Path(dataset_path).resolve()).encode()).hexdigest()[:16]
    return preprocessed / INDEX_DIR / f"{digest}.json"


def record_use(preprocessed: Path, *, name: str, dataset_path: str | os.PathLike, folders: Iterable[Path]) -> None:
    """Record that the dataset ``name`` at ``dataset_path`` uses these entry folders of ``preprocessed`` (now).

    Entries recorded before for the same dataset are kept (another config, e.g. a target spacing, has other ones).
    A failure to write is logged, never raised: the index only serves ``segbench cache``.
    """
    path = _index_path(preprocessed, dataset_path)
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        old = {}
    entries = sorted({*old.get("entries", []), *(Path(folder).name for folder in folders)})
    record = {"dataset": name, "path": os.fspath(Path(dataset_path).resolve()), "entries": entries,
              "last_used": time.time()}  # fmt: skip
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, record)
    except OSError as exc:
        log.warning("could not record the cache index %s (%s)", path, exc)


def _read_indexes(preprocessed: Path) -> list[dict]:
    indexes = []
    for path in sorted((preprocessed / INDEX_DIR).glob("*.json")):
        try:
            indexes.append({**json.loads(path.read_text(encoding="utf-8")), "_file": path})
        except (OSError, json.JSONDecodeError):
            continue
    return indexes


def list_entries(cache_dir: str | os.PathLike | None = None) -> list[CacheEntry]:
    """Every entry of the cache: generated datasets, then prepared cases grouped by dataset (sorted by name).

    Hidden folders (half-written entries of a running process, the index) are not listed.
    """
    root, preprocessed = cache_root(cache_dir), preprocessed_cache(cache_dir)
    entries = []
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("synthetic-")):
            entries.append(CacheEntry("dataset", folder.name, os.fspath(folder), folder, folder_bytes(folder),
                                      folder.stat().st_mtime))  # fmt: skip
    owners: dict[str, tuple[str, str, float]] = {}
    for index in _read_indexes(preprocessed):
        for name in index.get("entries", []):
            previous = owners.get(name)
            if previous is None or index.get("last_used", 0) > previous[2]:
                owners[name] = (str(index.get("dataset", UNKNOWN)), str(index.get("path", "")),
                                float(index.get("last_used", 0)))  # fmt: skip
    cases = []
    if preprocessed.is_dir():
        for folder in (p for p in preprocessed.iterdir() if p.is_dir() and not p.name.startswith(".")):
            dataset, path, used = owners.get(folder.name, (UNKNOWN, "", 0.0))
            cases.append(CacheEntry("preprocessed", dataset, path, folder, folder_bytes(folder),
                                    max(used, folder.stat().st_mtime)))  # fmt: skip
    return entries + sorted(cases, key=lambda e: (e.dataset, e.path.name))


def matches_dataset(entry: CacheEntry, dataset: str) -> bool:
    """True when ``dataset`` names the entry's dataset: its name, or its folder (path as given or resolved)."""
    if dataset in (entry.dataset, entry.dataset_path):
        return True
    return bool(entry.dataset_path) and os.fspath(Path(dataset).expanduser().resolve()) == entry.dataset_path


def remove_entries(entries: Iterable[CacheEntry], cache_dir: str | os.PathLike | None = None) -> int:
    """Remove ``entries`` (folders) and drop them from the indexes; returns the bytes freed."""
    entries = list(entries)
    freed = 0
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
        freed += entry.size_bytes
    removed = {entry.path.name for entry in entries if entry.kind == "preprocessed"}
    for index in _read_indexes(preprocessed_cache(cache_dir)):
        kept = [name for name in index.get("entries", []) if name not in removed]
        path = index.pop("_file")
        if not kept:
            path.unlink(missing_ok=True)
        elif len(kept) != len(index.get("entries", [])):
            atomic_write_json(path, {**index, "entries": kept})
    return freed
