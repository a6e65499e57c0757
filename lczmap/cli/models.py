"""`lczmap models` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("models", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def models_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap models is not implemented yet")
