"""The ``segbench`` click group: options shared by every sub-command, and one-sentence errors without a traceback.

Sub-command modules attach themselves to :data:`main` (``@main.command()``); :mod:`segbench.cli` imports them.
"""

from __future__ import annotations

import logging
import sys

import click

from segbench import __version__
from segbench.errors import SegbenchError


class SegbenchGroup(click.Group):
    """A click group that turns :class:`SegbenchError` into ``error: <sentence>`` and exit status 1."""

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except SegbenchError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted: finished results are kept; continue with --resume", err=True)
            sys.exit(130)


@click.group(cls=SegbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segbench")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Compare 3D medical image segmentation architectures fairly: same folds, same recipe, real statistics."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
