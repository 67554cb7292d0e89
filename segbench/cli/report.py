"""`segbench report` sub-command (placeholder until its issue lands)."""

from segbench.cli import main  # noqa: F401
