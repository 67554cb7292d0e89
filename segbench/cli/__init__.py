"""The ``segbench`` console script.

Each sub-command lives in its own module (``cache``, ``data``, ``ensemble``, ``models``, ``evaluate``, ``run``,
``report``, …) and imports heavy libraries inside the command body, so ``segbench --help`` stays fast. Library
code raises :class:`segbench.errors.SegbenchError` with a one-sentence message; :class:`SegbenchGroup` prints it
without a traceback and exits with status 1. The group itself is in :mod:`segbench.cli.group`, which the
sub-command modules import (so this package and its modules do not import each other).
"""

from __future__ import annotations

from segbench.cli import cache, data, ensemble, evaluate, leaderboard, models, plan, predict, report, run  # noqa: F401 - importing registers the sub-commands
from segbench.cli.group import SegbenchGroup, main

__all__ = ["SegbenchGroup", "main"]
