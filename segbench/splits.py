"""Cross-validation splits in nnU-Net's ``splits_final.json`` format.

A split list is ``[{"train": [case ids], "val": [case ids]}, ...]``, one dict per fold. segbench evaluates
every case out of fold, so every valid split list validates each case exactly once, and a case is never
in the train and val lists of the same fold. ``folds`` must be at least 2 (nnU-Net's ``all`` fold, which
trains and validates on everything, gives no out-of-fold estimate and is not supported).

Methods:

* ``"kfold"``: the case ids are sorted, shuffled with ``numpy.random.RandomState(seed)`` and cut into
  ``folds`` consecutive chunks; the first ``n % folds`` chunks get one extra case. Deterministic for a seed.
* ``"nnunet"``: the same procedure with nnU-Net's fixed seed 12345. This reproduces nnU-Net's folds exactly,
  because nnU-Net calls scikit-learn's ``KFold(n_splits, shuffle=True, random_state=12345)`` on the sorted
  ids, and that KFold shuffles ``arange(n)`` in place with a ``RandomState`` built from the seed and uses the
  same fold sizes. It is reimplemented here so segbench does not depend on scikit-learn.

Within each fold both lists are in sorted order, as scikit-learn returns its indices.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segbench.atomic import atomic_write_json
from segbench.errors import ConfigError, load_json_or_refuse

log = logging.getLogger(__name__)

NNUNET_SEED = 12345
METHODS = ("kfold", "nnunet")

Splits = list[dict[str, list[str]]]


def make_splits(case_ids: Sequence[str], *, folds: int = 5, method: str = "kfold", seed: int = 0) -> Splits:
    """Build shuffled k-fold splits over ``case_ids``.

    Args:
        case_ids: unique case identifiers, in any order (they are sorted first, so the result does not
            depend on directory listing order).
        folds: number of folds, 2 ≤ folds ≤ len(case_ids).
        method: ``"kfold"`` (shuffle with ``seed``) or ``"nnunet"`` (nnU-Net's folds; ``seed`` is ignored).
        seed: shuffle seed for ``"kfold"``.

    Returns:
        ``folds`` dicts ``{"train": [...], "val": [...]}``, each list sorted.

    Raises:
        ConfigError: unknown method, ``folds < 2``, fewer cases than folds, or duplicate case ids.
    """
    if method not in METHODS:
        raise ConfigError(f"--splits method {method!r} is unknown; use one of {', '.join(METHODS)} or a splits file")
    ids = _sorted_unique(case_ids, source="the dataset")
    _check_fold_count(folds, len(ids))
    rng_seed = NNUNET_SEED if method == "nnunet" else seed
    order = np.arange(len(ids))
    # Same call sequence as scikit-learn's KFold(shuffle=True): a fresh RandomState shuffling arange(n).
    np.random.RandomState(rng_seed).shuffle(order)
    sizes = np.full(folds, len(ids) // folds, dtype=int)
    sizes[: len(ids) % folds] += 1
    splits: Splits = []
    start = 0
    for size in sizes:
        val_idx = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [ids[i] for i in range(len(ids)) if i not in val_idx],
                "val": [ids[i] for i in range(len(ids)) if i in val_idx],
            }
        )
    return splits


def save_splits(path: str | Path, splits: Splits) -> Path:
    """Atomically write ``splits`` as ``splits_final.json``-style JSON.

    Args:
        path: destination file; its folder must exist.
        splits: fold dicts as returned by :func:`make_splits` or :func:`load_splits`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: ``splits`` is malformed (see :func:`load_splits` for the rules).
        OSError: the file cannot be written.
    """
    path = Path(path)
    clean = _validate(splits, source=f"the splits to be written to {path}", case_ids=None)
    return atomic_write_json(path, clean)


def load_splits(path: str | Path, *, case_ids: Sequence[str] | None = None) -> Splits:
    """Read and validate a ``splits_final.json``-style file.

    Rules: a JSON list of at least 2 dicts with ``"train"`` and ``"val"`` lists of strings; no duplicate
    within a list; train and val of a fold disjoint; every case in exactly one val list. With ``case_ids``,
    every id in the file must be one of them and every one of them must be validated.

    Args:
        path: the JSON file.
        case_ids: the dataset's case ids, or ``None`` to check only the internal consistency.

    Returns:
        The folds, with each list sorted.

    Raises:
        ConfigError: missing or unreadable file, or any rule above broken; the message names the file.
    """
    path = Path(path)
    raw = load_json_or_refuse(
        path,
        missing=f"splits file {path} does not exist; pass --splits kfold, nnunet or an existing file",
        unreadable=lambda exc: f"splits file {path} is not readable JSON ({exc}); fix or regenerate it",
    )
    return _validate(raw, source=f"splits file {path}", case_ids=case_ids)


def resolve_splits(spec: str, case_ids: Sequence[str], *, folds: int, seed: int) -> Splits:
    """Turn a ``--splits`` value into validated folds.

    Args:
        spec: ``"kfold"``, ``"nnunet"`` or the path of a splits file.
        case_ids: the dataset's case ids.
        folds: fold count for the generated methods. A file defines its own fold count, which wins; a
            mismatch is logged as a warning.
        seed: shuffle seed for ``"kfold"``.

    Returns:
        The folds, each list sorted.

    Raises:
        ConfigError: as :func:`make_splits` / :func:`load_splits`, or ``spec`` is neither a method nor an
            existing file.
    """
    if spec in METHODS:
        return make_splits(case_ids, folds=folds, method=spec, seed=seed)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--splits {spec!r} is neither {' nor '.join(METHODS)} nor an existing splits file")
    splits = load_splits(path, case_ids=case_ids)
    if len(splits) != folds:
        log.warning("splits file %s defines %d folds; using them instead of --folds %d", path, len(splits), folds)
    return splits


def _sorted_unique(case_ids: Sequence[str], *, source: str) -> list[str]:
    if isinstance(case_ids, str):
        raise TypeError("case_ids must be a sequence of strings, not one string")
    dupes = sorted(k for k, n in Counter(case_ids).items() if n > 1)
    if dupes:
        raise ConfigError(f"{source} lists duplicate case ids ({', '.join(dupes[:5])}); case ids must be unique")
    # str(): ids from numpy/pandas arrive as numpy.str_, which should not leak into JSON or comparisons.
    return sorted(str(i) for i in case_ids)


def _check_fold_count(folds: int, n_cases: int) -> None:
    if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
        raise ConfigError(f"--folds must be an integer of at least 2, got {folds!r}")
    if n_cases < folds:
        raise ConfigError(f"--folds {folds} needs at least {folds} cases but the dataset has {n_cases}; lower --folds")


def _validate(raw: Any, *, source: str, case_ids: Sequence[str] | None) -> Splits:
    if not isinstance(raw, list) or len(raw) < 2:
        raise ConfigError(f"{source} must be a JSON list of at least 2 {{'train': [...], 'val': [...]}} folds")
    splits: Splits = []
    for k, fold in enumerate(raw):
        if not isinstance(fold, dict) or set(fold) != {"train", "val"}:
            raise ConfigError(f"{source}: fold {k} must be a dict with exactly the keys 'train' and 'val'")
        lists = {}
        for key in ("train", "val"):
            ids = fold[key]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
                raise ConfigError(f"{source}: fold {k} {key!r} must be a non-empty list of case id strings")
            lists[key] = _sorted_unique(ids, source=f"{source} fold {k} {key!r}")
        both = sorted(set(lists["train"]) & set(lists["val"]))
        if both:
            raise ConfigError(f"{source}: fold {k} has cases in both train and val ({', '.join(both[:5])})")
        splits.append(lists)

    val_counts = Counter(i for fold in splits for i in fold["val"])
    repeated = sorted(i for i, n in val_counts.items() if n > 1)
    if repeated:
        raise ConfigError(f"{source} validates {', '.join(repeated[:5])} in more than one fold; each case once")
    mentioned = {i for fold in splits for key in ("train", "val") for i in fold[key]}
    never_val = sorted(mentioned - set(val_counts))
    if never_val:
        raise ConfigError(f"{source} never validates {', '.join(never_val[:5])}; every case needs one val fold")
    if case_ids is not None:
        known = set(case_ids)
        unknown = sorted(mentioned - known)
        if unknown:
            raise ConfigError(f"{source} names case ids not in the dataset ({', '.join(unknown[:5])}); regenerate it")
        missing = sorted(known - mentioned)
        if missing:
            raise ConfigError(f"{source} leaves out dataset cases ({', '.join(missing[:5])}); regenerate it")
    return splits
