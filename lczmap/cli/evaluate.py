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
              help="LCZ map to score: any integer or float GeoTIFF, codes 1-17 or 101-107, its nodata (-999, -1, ...) "
                   "and other values read as no class.")
@click.option("--reference", type=click.Path(), default=None,
              help="Training areas (the LCZ Generator's KML/KMZ with a folder per class, or GeoJSON/GeoPackage/"
                   "shapefile with a class column; any CRS) or another LCZ map (any CRS and resolution).")
@click.option("--reference-column", "--column", "column", default=None,
              help="Attribute holding the class (1-17, A-G, LCZ n, 101-107, optionally followed by a name) "
                   "[default: lcz, else FolderPath; KML/KMZ: the folders].")
@click.option("--band", default=None,
              help="Map band: a number or a band description [default: the band named lczFilter, else lcz, else 1]; "
                   "a reference map's band is chosen the same way.")
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
              help="Report JSON (a confusion-matrix PNG and, for --map, the agreement map <stem>.agreement.tif beside it) "
                   "[default: <map>.evaluation.json, or ./<model>-<data>.evaluation.json].")
@click.pass_context
def evaluate_cmd(ctx: click.Context, map_path, reference, column, band, draws, model, data, split, partition, seed, out) -> None:
    """Score an LCZ map against reference training areas (LCZ Generator procedure), or a model on test patches.

    \b
    lczmap evaluate --map lcz.tif --reference training_areas.kmz [--bootstrap 25]
    lczmap evaluate --map lcz.tif --reference polygons.geojson [--reference-column lcz]
    lczmap evaluate --map lcz.tif --reference global_lcz_crop.tif
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
            suspicious = report.get("suspicious_reference")
            if suspicious:
                click.echo(f"{len(suspicious)} suspicious training-area findings (listed in the report)")
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
