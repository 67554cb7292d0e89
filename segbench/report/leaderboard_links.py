"""``RUN_DIR/leaderboards.json``: the leaderboards a run is part of, so that its report can link them.

``segbench leaderboard`` adds its page to the file of every run it ranks (:func:`register_leaderboard`); the report
reads it on every render (:func:`leaderboard_links`) and shows ``Part of leaderboard: <relative link>``. Paths are
stored relative to the run directory, so a folder holding both the runs and the leaderboard can move as a whole.
Entries whose page no longer exists are dropped.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from segbench import rundir
from segbench.atomic import atomic_write_json

log = logging.getLogger(__name__)


def _entries(run_dir: Path) -> list[dict[str, Any]]:
    path = rundir.leaderboards_path(run_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); it is rewritten with the current leaderboard only", path, exc)
        return []
    entries = data.get("leaderboards") if isinstance(data, dict) else None
    return [e for e in entries or [] if isinstance(e, dict) and isinstance(e.get("path"), str)]


def _page(run_dir: Path, entry: dict[str, Any]) -> Path:
    return (run_dir / entry["path"]).resolve()


def register_leaderboard(run_dir: str | Path, page: str | Path, *, title: str) -> Path:
    """Add (or refresh) ``page`` in ``RUN_DIR/leaderboards.json``, atomically; returns the file.

    Args:
        run_dir: a run the leaderboard ranks.
        page: the leaderboard's HTML page.
        title: what the link says (e.g. ``"3 datasets by Dice"``).
    """
    run_dir, page = Path(run_dir), Path(page).resolve()
    kept = [e for e in _entries(run_dir) if _page(run_dir, e) != page and _page(run_dir, e).is_file()]
    entry = {"path": Path(os.path.relpath(page, run_dir.resolve())).as_posix(), "title": title}
    return atomic_write_json(rundir.leaderboards_path(run_dir), {"leaderboards": [*kept, entry]})


def leaderboard_links(run_dir: str | Path, report_dir: str | Path) -> tuple[tuple[str, str], ...]:
    """(text, href relative to ``report_dir``) of every existing leaderboard page of the run, in registration order."""
    run_dir, report_dir = Path(run_dir), Path(report_dir).resolve()
    links = []
    for entry in _entries(run_dir):
        page = _page(run_dir, entry)
        if page.is_file():
            href = Path(os.path.relpath(page, report_dir)).as_posix()
            links.append((f"{entry.get('title') or page.parent.name} ({href})", href))
    return tuple(links)
