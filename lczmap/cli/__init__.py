"""The `lczmap` command line: a click group whose commands live one per module in this package."""

from __future__ import annotations

import logging
import sys

import click

from .. import __version__
from ..errors import LczmapError


class LczmapGroup(click.Group):
    """Turns LczmapError into one line on stderr and exit code 1, with no traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LczmapError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished outputs are kept, run the same command again to resume.", err=True)
            ctx.exit(130)


@click.group(cls=LczmapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less output: warnings only, no progress bars.")
@click.version_option(__version__, prog_name="lczmap")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Local Climate Zone maps of cities: stage inputs, run MSMLA/DF4LCZ, write a WUDAPT-style GeoTIFF."""
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("lczmap").setLevel(max(level, logging.DEBUG))
    for noisy in ("distributed", "rasterio", "fiona", "pyogrio", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet > 0
    ctx.obj["verbosity"] = verbose - quiet


def main() -> None:
    cli(prog_name="lczmap")


# Command modules import their heavy dependencies inside the command, so `lczmap --help` stays fast.
from . import batch, classes, demo, evaluate, models, predict, stage, train  # noqa: E402,F401
