"""`lczmap stage` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("stage", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def stage_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap stage is not implemented yet")
