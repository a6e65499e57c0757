"""`lczmap predict` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("predict", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def predict_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap predict is not implemented yet")
