"""`lczmap models`: list the buildable networks and the trained models (without Keras); import or pull published ones."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import cli

if TYPE_CHECKING:
    from ..card import ModelCard


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


@cli.group("models", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.pass_context
def models_cmd(ctx: click.Context, as_json: bool) -> None:
    """List every network (default input shape, parameter count) and the trained models found on the search path.

    Trained models are the folders with a card.json under $LCZMAP_MODELS, models/ and the model cache
    ($LCZMAP_CACHE/models, where `lczmap models import` and `lczmap models pull` put published models).
    Listing loads no network: parameter counts are those of lczmap.nets.NETWORKS.
    """
    if ctx.invoked_subcommand is not None:
        return
    from ..card import available_models
    from ..nets import NETWORKS

    networks = [{"name": n.name, "input_shape": list(n.default_shape), "inputs": n.inputs, "params": n.params,
                 "description": n.description} for n in NETWORKS.values()]
    cards = available_models()
    if as_json:
        click.echo(json.dumps({
            "networks": networks,
            "models": [{"name": c.name, "network": c.network, "bands": list(c.bands), "patch_size": c.patch_size,
                        "input_shape": list(c.input_shape), "folder": str(c.folder), "synthetic": c.synthetic,
                        "product_level": c.product_level, "trained_on": c.trained_on, "source": c.source,
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
        click.echo("Trained models: none found (set LCZMAP_MODELS, `lczmap models pull so2sat-sen2lcz`, or train one "
                   "with `lczmap train`).")
        return
    click.echo("Trained models:")
    width = max(len(c.name) for c in cards)
    click.echo(f"{'name':<{width}}  {'network':<10} {'bands':>5} {'patch':>5}  {'trained on':<12} OA")
    for c in cards:
        oa = card_oa(c.metrics)
        oa_text = "-" if oa is None else f"{oa[0]:.3f}" + (f" ({oa[1]})" if oa[1] else "")
        seen = "synthetic" if c.synthetic else f"S2 {c.product_level}" if c.product_level else "-"
        click.echo(f"{c.name:<{width}}  {c.network:<10} {len(c.bands):>5} {c.patch_size:>5}  {seen:<12} {oa_text}")


@models_cmd.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--as", "name", required=True, help="Name of the new model (its folder in the model cache).")
@click.option("--like", default=None, help="A published model whose layout FILE has (for a file other than the "
              "published one, e.g. retrained with the release's code).")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The release's test-set predictions (default: the release's file name beside FILE).")
@click.option("--force", is_flag=True, help="Replace a model of that name in the model cache.")
def import_cmd(file: Path, name: str, like: str | None, results: Path | None, force: bool) -> None:
    """Convert a published model's Keras 2 weights FILE into an lczmap model in the model cache.

    FILE is recognised by its sha256 (see `lczmap.models_store.PUBLISHED`); every weight in it must fill the network
    lczmap builds for it, shape for shape, or nothing is written. The card records the source, licence, citation,
    input convention, product level and the published test accuracy.
    """
    from ..models_store import import_model

    card = import_model(file, name, like=like, results=results, force=force,
                        command=f"lczmap models import {file} --as {name}" + (f" --like {like}" if like else ""))
    _report(card)


@models_cmd.command("pull")
@click.argument("name")
@click.option("--force", is_flag=True, help="Import again even if the model is already in the model cache.")
def pull_cmd(name: str, force: bool) -> None:
    """Download published model NAME from its release (pinned to a commit and sha256) and import it.

    Files come from the release's repository, or from $LCZMAP_MODELS_URL (a mirror); they are kept, verified, in
    $LCZMAP_CACHE/models/.downloads. Without internet, copy the file and use `lczmap models import`.
    """
    from ..models_store import pull_model

    _report(pull_model(name, force=force))


def _report(card: ModelCard) -> None:
    """One line: what was imported, where, its inputs and its published accuracy."""
    oa = card_oa(card.metrics)
    published = "" if oa is None else f"; published OA {oa[0]:.3f}" + (
        f", kappa {card.metrics[oa[1]]['kappa']:.3f}" if oa[1] and "kappa" in card.metrics.get(oa[1], {}) else "")
    click.echo(f"{card.name}: {card.network} in {card.folder} ({card.patch_size}x{card.patch_size} px, "
               f"{len(card.bands)} bands, Sentinel-2 {card.product_level or 'level unknown'}{published})")
