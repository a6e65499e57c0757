"""`lczmap classes`: print the LCZ class table."""

from __future__ import annotations

import json
import sys

import click

from . import cli


@cli.command("classes")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def classes_cmd(as_json: bool) -> None:
    """List the 17 LCZ classes: code, LCZ letter, name and WUDAPT colour."""
    from ..classes import lcz_classes

    table = lcz_classes()
    if as_json:
        click.echo(json.dumps([{"code": c.code, "lcz": c.lcz, "name": c.name, "colour": c.colour} for c in table], indent=2))
        return
    click.echo(f"{'code':>4}  {'LCZ':<3}  {'name':<22}  colour")
    for c in table:
        swatch = click.style("  ", bg=c.rgb) if sys.stdout.isatty() else ""
        click.echo(f"{c.code:>4}  {c.lcz:<3}  {c.name:<22}  {c.colour} {swatch}".rstrip())
