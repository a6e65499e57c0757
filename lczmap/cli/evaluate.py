"""`lczmap evaluate`: accuracy of a map against reference polygons/rasters, or of a model on a patch dataset."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import LczmapError
from . import cli


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@cli.command("evaluate")
@click.option("--map", "map_path", type=click.Path(dir_okay=False), default=None,
              help="LCZ GeoTIFF to score (codes 1-17 or 101-107, 0 nodata).")
@click.option("--reference", type=click.Path(), default=None,
              help="Reference training-area polygons (any vector format, any CRS) or an LCZ raster.")
@click.option("--column", default="lcz", show_default=True,
              help="Polygon attribute holding the LCZ class (1-17, A-G or 101-107).")
@click.option("--band", default=None,
              help="Map band: a number or a band description [default: the band described lczFilter, else 1].")
@click.option("--bootstrap", "draws", type=click.IntRange(min=1), default=25, show_default=True,
              help="Stratified 70/30 draws (by polygon; by pixel for a raster reference).")
@click.option("--model", default=None, help="Model folder or name, scored on --data instead of a map.")
@click.option("--data", type=click.Path(), default=None,
              help="Patch dataset for --model: So2Sat/MSMLA .h5 or a LCZC-GES2 folder.")
@click.option("--split", default="test", show_default=True, help="LCZC-GES2 split scored with --model.")
@click.option("--partition", default="random", show_default=True,
              help="LCZC-GES2 split file patches_split/partition_NAME.npz.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the bootstrap draws.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Report JSON (a confusion-matrix PNG is written beside it) "
                   "[default: <map>.evaluation.json, or ./<model>-<data>.evaluation.json].")
@click.pass_context
def evaluate_cmd(ctx: click.Context, map_path, reference, column, band, draws, model, data, split, partition, seed, out) -> None:
    """Score an LCZ map against reference training areas (LCZ Generator procedure), or a model on test patches.

    \b
    lczmap evaluate --map lcz.tif --reference polygons.geojson [--column lcz] [--bootstrap 25]
    lczmap evaluate --model models/msmla18-demo --data test.h5
    """
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    if map_path and model:
        raise LczmapError("give either --map with --reference, or --model with --data, not both")
    if map_path:
        if not reference:
            raise LczmapError("--map needs --reference (polygons or an LCZ raster)")
        from ..evaluate import evaluate_map

        if not Path(map_path).exists():
            raise LczmapError(f"--map {map_path}: file does not exist")
        report = evaluate_map(map_path, reference, column=column, band=band, draws=draws, seed=seed, out=out)
        s, b = report["all_samples"], report["bootstrap"]["metrics"]
        if not quiet:
            click.echo(
                f"{report['n_pixels']} reference pixels ({report['reference_kind']}): OA {_fmt(s['oa'])}, OA_u {_fmt(s['oa_u'])}, "
                f"OA_bu {_fmt(s['oa_bu'])}, OA_w {_fmt(s['oa_w'])}, kappa {_fmt(s['kappa'])}; bootstrap OA {_fmt(b['oa']['mean'])} "
                f"[{_fmt(b['oa']['low'])}, {_fmt(b['oa']['high'])}]"
            )
    elif model:
        if not data:
            raise LczmapError("--model needs --data (a patch dataset to score it on)")
        from ..evaluate import evaluate_model

        report = evaluate_model(model, data, split=split, partition=partition, out=out, progress=not quiet)
        if not quiet:
            click.echo(f"{report['n']} patches: OA {_fmt(report['oa'])}, OA_w {_fmt(report['oa_w'])}, kappa {_fmt(report['kappa'])}, "
                       f"F1 {_fmt(report['f1_weighted'])}")
    else:
        raise LczmapError("nothing to evaluate: give --map with --reference, or --model with --data")
    click.echo(f"wrote {report['output']}")
