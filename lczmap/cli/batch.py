"""`lczmap batch` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("batch", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def batch_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap batch is not implemented yet")
