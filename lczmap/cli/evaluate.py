"""`lczmap evaluate` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("evaluate", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def evaluate_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap evaluate is not implemented yet")
