"""Where segbench keeps generated data: ``$SEGBENCH_CACHE``, else ``~/.cache/segbench``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir`` when given, else ``$SEGBENCH_CACHE``, else ``~/.cache/segbench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SEGBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "segbench"


def preprocessed_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder of the preprocessing cache (``.npy`` memory-maps keyed by source content and parameters)."""
    return cache_root(cache_dir) / "preprocessed"
