"""`lczmap demo` (placeholder until its issue lands)."""

from __future__ import annotations

import click

from . import cli


@cli.command("demo-data", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def demo_cmd() -> None:
    """Not implemented yet."""
    raise click.ClickException("lczmap demo is not implemented yet")
