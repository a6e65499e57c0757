"""`lczmap train` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("train", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def train_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap train is not implemented yet")
