"""`lczmap models`: list the buildable networks (input shape, parameter count) and the trained model folders."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from . import cli


def card_oa(metrics: dict[str, Any]) -> tuple[float, str] | None:
    """A model card's overall accuracy and where it was measured: a top-level "oa", else a test split, else validation."""
    def oa_of(section: Any) -> float | None:
        if isinstance(section, dict):
            value = next((v for k, v in section.items() if k.lower() == "oa"), None)
            if isinstance(value, int | float) and not math.isnan(value):
                return float(value)
        return None

    if (value := oa_of(metrics)) is not None:
        return value, ""
    keys = sorted(k for k in metrics if k.startswith("test")) + [k for k in metrics if not k.startswith("test")]
    for key in keys:
        if (value := oa_of(metrics[key])) is not None:
            return value, key
    return None


def _without_matrices(metrics: dict[str, Any]) -> dict[str, Any]:
    """Card metrics without the (17 x 17) confusion matrices, at the top level or in a split's section."""
    return {k: _without_matrices(v) if isinstance(v, dict) else v for k, v in metrics.items() if k != "confusion_matrix"}


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def models_cmd(as_json: bool) -> None:
    """List every network (default input shape, parameter count) and the trained models found on the search path.

    Networks are built as `lczmap.nets.build(name)` at the paper's input shape; MSMLA accepts any patch size and
    band count. Trained models are the folders with a card.json under $LCZMAP_MODELS and models/.
    """
    from ..card import available_models
    from ..nets import NETWORKS, build

    networks = [
        {"name": n.name, "input_shape": list(n.default_shape), "inputs": n.inputs,
         "params": int(build(n.name).count_params()), "description": n.description}
        for n in NETWORKS.values()
    ]
    cards = available_models()
    if as_json:
        click.echo(json.dumps({
            "networks": networks,
            "models": [{"name": c.name, "network": c.network, "bands": list(c.bands), "patch_size": c.patch_size,
                        "input_shape": list(c.input_shape), "folder": str(c.folder),
                        "metrics": _without_matrices(c.metrics)} for c in cards],
        }, indent=2, default=str))
        return
    click.echo("Networks (lczmap.nets.build):")
    click.echo(f"  {'name':<11} {'input shape':<13} {'params':>10}  description")
    for n in networks:
        shape = "x".join(map(str, n["input_shape"]))
        click.echo(f"  {n['name']:<11} {shape:<13} {n['params']:>10,}  {n['description']}")
    click.echo("  Input shapes are the papers'; patch networks accept any patch size and band count.")
    for n in networks:
        if not n["inputs"].startswith("patch"):
            click.echo(f"  {n['name']} input: {n['inputs']}")
    click.echo("")
    if not cards:
        click.echo("Trained models: none found (set LCZMAP_MODELS or train one with `lczmap train`).")
        return
    click.echo("Trained models:")
    width = max(len(c.name) for c in cards)
    click.echo(f"{'name':<{width}}  {'network':<10} {'bands':>5} {'patch':>5}  OA")
    for c in cards:
        oa = card_oa(c.metrics)
        oa_text = "-" if oa is None else f"{oa[0]:.3f}" + (f" ({oa[1]})" if oa[1] else "")
        click.echo(f"{c.name:<{width}}  {c.network:<10} {len(c.bands):>5} {c.patch_size:>5}  {oa_text}")
