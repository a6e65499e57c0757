"""The `lczmap` command line: a click group whose commands live one per module in this package."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from .. import __version__
from ..errors import as_lczmap_error
from .options import Checked


class LczmapGroup(click.Group):
    """The single error boundary: every failure of a command ends as one line `Error: <file or option>: <what>`.

    LczmapError carries its own line; any other exception (rasterio, pyproj, shapely, pyogrio, h5py, an
    OSError such as a full disk, one re-raised from a Dask worker) is named by the file it concerns, or by
    the command. Exit code 1 and no traceback, except with -v, where the traceback comes first for bug reports.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.BadParameter as exc:  # a refused value is a bad input like any other: one line, exit 1
            hint = exc.param.opts[0] if exc.param is not None and exc.param.opts else (exc.param_hint or "option")
            sep = " " if exc.param is not None and isinstance(exc.param.type, Checked) else ": "  # Checked names the value
            click.echo(f"Error: {hint}{sep}{exc.message}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted; finished outputs are kept, run the same command again to resume.", err=True)
            ctx.exit(130)
        except Exception as exc:  # the boundary: nothing below it reaches the user as a traceback
            if (ctx.obj or {}).get("verbosity", 0) > 0:
                traceback.print_exc()
            command = f"lczmap {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "lczmap"
            click.echo(f"Error: {as_lczmap_error(exc, command)}", err=True)
            ctx.exit(1)


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
    from ..cluster import configure_process

    configure_process()  # GDAL and heap settings, once for every command (workers get them by a plugin)


def main() -> None:
    cli(prog_name="lczmap")


# Command modules import their heavy dependencies inside the command, so `lczmap --help` stays fast.
from . import batch, classes, demo, evaluate, models, predict, stage, train  # noqa: E402,F401
