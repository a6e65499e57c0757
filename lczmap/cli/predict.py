"""`lczmap predict`: map one city (or the built-in demo city) to a WUDAPT-style LCZ GeoTIFF with summary and quicklook."""

from __future__ import annotations

import click

from . import cli
from .options import city_input_options, city_overrides, scheduler_opt, workers_opt


@cli.command("predict")
@city_input_options
@click.option("--demo", is_flag=True, help="Map the built-in demo city (generated once into $LCZMAP_CACHE or ~/.cache/lczmap).")
@click.option("--out", required=True, type=click.Path(), help="Output GeoTIFF (COG), e.g. lcz.tif.")
@click.option("--model", default=None, help="Model name or folder (default: msmla18-demo; see `lczmap models`).")
@click.option("--resolution", type=float, default=100.0, show_default=True, help="Output cell size in metres (multiple of 10).")
@click.option("--crs", default=None, help="Output CRS (default: the AOI's UTM zone). EPSG:4326 reprojects the finished map, as the LCZ Generator publishes it.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, help="Patches per model call.")
@workers_opt
@scheduler_opt
@click.option("--probabilities", is_flag=True, help="Also write <out stem>_probabilities.tif: the 17 class probabilities in %.")
@click.option("--no-filter", "no_filter", is_flag=True, help="Skip the LCZ Generator's Gaussian filter (no lczFilter band).")
@click.option("--nodata-threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Largest share of missing pixels in a cell's patch before the cell is left unmapped.")
@click.pass_context
def predict_cmd(ctx: click.Context, config_path: str | None, demo: bool, out: str, model: str | None, resolution: float,
                crs: str | None, batch_size: int, workers: int | None, scheduler: str | None, probabilities: bool,
                no_filter: bool, nodata_threshold: float, **kwargs) -> None:
    """Map a city's Local Climate Zones with a trained model.

    Writes OUT, a Cloud-Optimized GeoTIFF with the LCZ Generator's bands lcz (raw), lczFilter (filtered,
    the one to use) and lczProbability (% for the raw class); codes 1-17, 0 = nodata. Beside it:
    <stem>.summary.json (area per class, timings), <stem>.png (quicklook with legend and scale bar)
    and <stem>.qml (QGIS draws the map in the WUDAPT colours with it).
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # quietens most of TensorFlow's C++ start-up logging
    from ..card import DEFAULT_MODEL
    from ..config import load_city_config
    from ..errors import LczmapError
    from ..predict import check_output, demo_city, predict_city

    overrides = city_overrides(kwargs)
    if workers is not None and scheduler is not None:
        raise LczmapError("--workers and --scheduler: give one (local processes or a running cluster), not both")
    check_output(out)  # refuse an unwritable --out before any work
    if demo:
        if config_path is not None or any(v is not None for v in overrides.values()):
            raise LczmapError("--demo maps the built-in demo city: leave out --config and the input paths")
        config_path = demo_city()
    config = load_city_config(config_path, **overrides)
    quiet = ctx.obj.get("quiet", False)
    summary = predict_city(
        config, out, model=model or DEFAULT_MODEL, resolution=resolution, crs=crs, batch_size=batch_size,
        workers=workers, scheduler=scheduler, probabilities=probabilities, filter=not no_filter,
        nodata_threshold=nodata_threshold, progress=not quiet,
    )
    if not quiet:
        top = sorted(summary["classes"].values(), key=lambda c: -c["percent"])[:3]
        classes = ", ".join(f"LCZ {c['lcz']} {c['percent']:.0f}%" for c in top if c["percent"] > 0)
        click.echo(f"Wrote {out}: {summary['mapped_km2']:.1f} km2 mapped ({classes}); "
                   f"no data on {summary['nodata_share']:.1%} of the AOI; "
                   f"{sum(summary['seconds'].values()):.0f} s")
