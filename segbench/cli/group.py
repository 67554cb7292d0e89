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


# Third-party loggers whose debug output (font manager scans, image plugins, ...) says nothing about segbench.
QUIET_LIBRARIES = ("matplotlib", "PIL", "fontTools", "numba", "h5py", "urllib3", "filelock", "asyncio", "submitit")


class TqdmHandler(logging.Handler):
    """Prints records with ``tqdm.write``, so a line never breaks an open progress bar (plain print without bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_logging(verbose: int) -> None:
    """Root level from ``-v`` (warning, info, debug); segbench's progress lines at info always; third parties quiet."""
    from segbench.progress import PROGRESS_LOGGER

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(h, TqdmHandler) for h in progress.handlers):
        handler = TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False


@click.group(cls=SegbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segbench")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Compare 3D medical image segmentation architectures fairly: same folds, same recipe, real statistics."""
    configure_logging(verbose)
