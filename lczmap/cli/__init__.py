"""The `lczmap` command line: a click group whose commands live one per module in this package."""

from __future__ import annotations

import os
import signal
import sys
import traceback

import click

from .. import __version__, console
from ..errors import as_lczmap_error
from .options import Checked


def _verbosity_counted(ctx: click.Context, param: click.Parameter, value: int) -> None:
    """-v/-q given after the command name: they add to those given before it (the console is set up again)."""
    if value:
        obj = ctx.ensure_object(dict)
        obj["verbosity"] = obj.get("verbosity", 0) + (value if param.name == "verbose" else -value)
        obj["quiet"] = obj["verbosity"] < 0
        console.configure(obj["verbosity"])


def verbosity_options(callback=None) -> list[click.Option]:
    """-v/--verbose and -q/--quiet: the group's, and every command's (so they work before or after its name)."""
    extra = {} if callback is None else {"callback": callback, "expose_value": False}
    return [click.Option(["-v", "--verbose"], count=True, help="More log output (-v debug; -vv also the libraries').", **extra),
            click.Option(["-q", "--quiet"], count=True, help="Less output: lczmap's warnings only, no progress bars.", **extra)]


class LczmapCommand(click.Command):
    """Every command of the group: it takes -v/-q too, anywhere among its options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_options(_verbosity_counted))


class LczmapSubGroup(click.Group):
    """A command with subcommands (`lczmap models ...`): it and its subcommands take -v/-q too."""

    command_class = LczmapCommand
    group_class = type  # groups below it are of this class as well

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_options(_verbosity_counted))


def usage_line(exc: click.UsageError) -> str:
    """A usage error as lczmap's one line `<option>: <what is wrong>`, from click's own message."""
    command = exc.ctx.command_path if exc.ctx is not None else "lczmap"
    see = f"see '{command} --help'"
    param = getattr(exc, "param", None)
    hint = param.opts[0] if isinstance(param, click.Option) and param.opts else \
        param.human_readable_name if param is not None else getattr(exc, "param_hint", None)
    if isinstance(hint, (list, tuple)):
        hint = " / ".join(hint)
    if isinstance(exc, click.MissingParameter):
        kind = exc.param_type or (param.param_type_name if param is not None else "parameter")
        extra = param.type.get_missing_message(param=param, ctx=exc.ctx) if param is not None else None
        return f"{hint or command}: missing {kind}{f'; {extra}' if extra else ''} ({see})"
    if isinstance(exc, click.BadParameter):
        sep = " " if param is not None and isinstance(param.type, Checked) else ": "  # Checked names the value
        return f"{hint or command}{sep}{exc.message}" if exc.message else f"{command}: {exc.format_message()}"
    if isinstance(exc, click.NoSuchOption):
        maybe = f" (did you mean {', '.join(exc.possibilities)}?)" if exc.possibilities else ""
        return f"{exc.option_name}: no such option of {command}{maybe} ({see})"
    return f"{command}: {exc.format_message()} ({see})"


class LczmapGroup(click.Group):
    """The single error boundary: every failure of a command ends as one line `Error: <file or option>: <what>`.

    A usage error (a missing or unknown option, a refused value) is click's message in that form.
    LczmapError carries its own line; any other exception (rasterio, pyproj, shapely, pyogrio, h5py, an
    OSError such as a full disk, one re-raised from a Dask worker) is named by the file it concerns, or by
    the command. Exit code 1 and no traceback, except with -v, where the traceback comes first for bug reports.
    """

    command_class = LczmapCommand
    group_class = LczmapSubGroup

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # plain `lczmap`: its help, as `lczmap --help` gives
            click.echo(exc.format_message())
            raise click.exceptions.Exit(0) from None
        except click.UsageError as exc:  # before any command: `lczmap --bogus`
            raise click.ClickException(usage_line(exc)) from None  # shown as `Error: ...`, exit code 1

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a refused or missing value is a bad input like any other: one line, exit 1
            click.echo(f"Error: {usage_line(exc)}", err=True)
            ctx.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:  # the reader went away (`lczmap classes | head -1`): nothing to say to it
            _silence_stdout()
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; finished outputs are kept, run the same command again to resume.", err=True)
            ctx.exit(130)
        except Exception as exc:  # the boundary: nothing below it reaches the user as a traceback
            if (ctx.obj or {}).get("verbosity", 0) > 0:
                traceback.print_exc()
            command = f"lczmap {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "lczmap"
            click.echo(f"Error: {as_lczmap_error(exc, command)}", err=True)
            if _exit_at_once and console.heavy_native_modules():
                _leave(1)
            ctx.exit(1)


@click.group("lczmap", cls=LczmapGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lczmap")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Local Climate Zone maps of cities: stage inputs, run MSMLA/DF4LCZ, write a WUDAPT-style GeoTIFF."""
    ctx.ensure_object(dict)
    ctx.obj["verbosity"] = verbose - quiet
    ctx.obj["quiet"] = ctx.obj["verbosity"] < 0
    console.configure(ctx.obj["verbosity"])
    from ..process import configure_process

    configure_process()  # GDAL and heap settings, once for every command (workers get them by a plugin)


cli.params[:0] = verbosity_options()


# Set by `main` (the real program, not a test runner): after an error line, leave the process at once.
_exit_at_once = False


def _silence_stdout() -> None:
    """Point standard output at /dev/null, so the interpreter's last flush does not fail on a closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real descriptor (a test runner's stream)
        pass


def _leave(code: int) -> None:
    """Flush the output and end the process now, skipping the release of what the failed command still holds."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def main() -> None:
    """The `lczmap` program: the group, with an exit code that is always 0 or 1 (130 when interrupted).

    After an error line, a process that loaded TensorFlow, JAX or h5py leaves at once, its output flushed:
    releasing the objects of a failed native write (h5py's after a file-size limit) can crash the interpreter,
    which would turn exit code 1 into a segmentation fault.
    """
    global _exit_at_once
    _exit_at_once = True
    console.separate_python_stderr()
    # Tracebacks from destructors (h5py's after a failed write print them through both hooks) are debug lines;
    # nothing else reaches sys.excepthook, as every exception of a command ends at the boundary or below.
    sys.unraisablehook = console.log_unraisable
    sys.excepthook = console.log_uncaught
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write fails with EFBIG (an error line), not a signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        cli.main(prog_name="lczmap")
    except Exception as exc:  # outside any command (setting up the console): still one line, exit 1
        if console.inherited_verbosity() > 0:
            traceback.print_exc()
        click.echo(f"Error: {as_lczmap_error(exc, 'lczmap')}", err=True)
        _leave(1)


# Command modules import their heavy dependencies inside the command, so `lczmap --help` stays fast.
from . import batch, classes, demo, evaluate, fetch, models, predict, stage, train  # noqa: E402,F401
