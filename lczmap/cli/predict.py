"""`lczmap predict`: map one city (or the built-in demo city) to a WUDAPT-style LCZ GeoTIFF with summary and quicklook."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from . import cli
from .fetch import source_options
from .options import (CRS_TYPE, RESOLUTION, city_input_options, city_overrides, composite_options, scheduler_opt,
                      threads_opt, tile_km_opt, tiles_opt, with_stac_items, workers_opt)

log = logging.getLogger(__name__)

# The built-in demo city: a seed the shipped model was not trained on, and a size mapped in about a minute.
DEMO_SEED = 7
DEMO_SIZE_KM = 8.0


class _BatchSize(click.ParamType):
    """A whole number of patches >= 1, or 'auto'."""

    name = "N|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if number < 1:
            self.fail(f"{value}: must be a whole number of patches >= 1, or auto", param, ctx)
        return number


@cli.command("predict")
@city_input_options
@click.option("--demo", is_flag=True, help="Map the built-in demo city (generated once into $LCZMAP_CACHE or ~/.cache/lczmap).")
@click.option("--out", required=True, type=click.Path(), help="Output GeoTIFF (COG), e.g. lcz.tif.")
@click.option("--model", default=None, help="Model name or folder (default: msmla18-demo on a demo city, else so2sat-sen2lcz; see `lczmap models`).")
@click.option("--strict-inputs", is_flag=True, help="Refuse inputs far outside the model's training statistics (default: warn).")
@click.option("--resolution", type=RESOLUTION, default=100.0, show_default=True, help="Output cell size in metres (multiple of 10).")
@click.option("--crs", type=CRS_TYPE, default=None, help="Output CRS (default: the AOI's UTM zone). EPSG:4326 reprojects the finished map, as the LCZ Generator publishes it.")
@click.option("--batch-size", type=_BatchSize(), default="256", show_default=True,
              help="Patches per model call, or 'auto' (sized to the accelerator's memory, at most one block's cells; 256 on a CPU).")
@click.option("--precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="bfloat16: run the network in Keras' mixed bfloat16 (for GPUs/TPUs with bfloat16 units).")
@click.option("--stack", type=click.Path(), default=None,
              help="Map from a Zarr stack written by `lczmap stage` (its grid, AOI and bands) instead of the inputs.")
@workers_opt
@threads_opt
@scheduler_opt
@tiles_opt
@tile_km_opt
@composite_options
@source_options
@click.option("--probabilities", is_flag=True, help="Also write <out stem>_probabilities.tif: the 17 class probabilities, % + 1 (0 = nodata).")
@click.option("--no-filter", "no_filter", is_flag=True, help="Skip the LCZ Generator's Gaussian filter (no lczFilter band).")
@click.option("--nodata-threshold", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Largest share of missing pixels in a cell's patch before the cell is left unmapped.")
@click.pass_context
def predict_cmd(ctx: click.Context, config_path: str | None, demo: bool, out: str, model: str | None, resolution: float,
                crs: str | None, batch_size: int, workers: int | None, threads: int | None, scheduler: str | None,
                tiles_output: bool, tile_km: float | None, probabilities: bool,
                no_filter: bool, nodata_threshold: float, composite: str, mask_snow: bool, stac_url: str | None,
                stac_datetime: str | None, max_cloud: float | None, **kwargs) -> None:
    """Map a city's Local Climate Zones with a trained model.

    Writes OUT, a one-band Cloud-Optimized GeoTIFF lcz_filtered (the filtered classes, holes filled; lcz with
    --no-filter) with the WUDAPT colour table and class names (OUT.aux.xml); codes 1-17, 0 = nodata in
    every file. Beside it: <stem>_lcz3.tif (the LCZ Generator's bands lcz, lczFilter, lczProbability),
    <stem>_filled.tif (1 mapped, 2 filled by the filter, 3 no class), <stem>.summary.json (area per
    class, the AOI's share mapped / filled by the filter / no class, timings), <stem>.png (quicklook) and the QGIS styles <stem>.qml and
    <stem>_lcz3.qml.
    """
    # the pipeline is imported when the command runs, so `lczmap --help` stays fast
    from ..aoi import read_aoi
    from ..card import DEFAULT_MODEL
    from ..cluster import check_cluster_options
    from ..errors import LczmapError
    from ..outputs import check_output
    from ..predict import predict_city
    from ..region import map_region, needs_region, plan_region

    overrides = city_overrides(kwargs)
    precision, stack = kwargs.pop("precision"), kwargs.pop("stack")
    strict_inputs = kwargs.pop("strict_inputs")
    check_cluster_options(workers, threads, scheduler)
    check_output(out)  # refuse an unwritable --out before any work
    if stack is not None:
        if demo or config_path is not None or any(v is not None for v in overrides.values()):
            raise LczmapError("--stack maps a staged stack: leave out --demo, --config and the input paths")
        given = ctx.get_parameter_source("resolution") != click.core.ParameterSource.DEFAULT
        summary = predict_city(
            None, out, model=model or DEFAULT_MODEL, resolution=resolution if given else None, crs=crs,
            batch_size=batch_size, workers=workers, threads=threads, scheduler=scheduler, probabilities=probabilities,
            filter=not no_filter, nodata_threshold=nodata_threshold, progress=not ctx.obj.get("quiet", False),
            precision=precision, stack=stack, strict_inputs=strict_inputs,
        )
        _report(ctx, out, summary)
        return
    if demo:
        if config_path is not None or any(v is not None for v in overrides.values()):
            raise LczmapError("--demo maps the built-in demo city: leave out --config and the input paths")
        config_path = demo_city()
    quiet = ctx.obj.get("quiet", False)
    config, model = _city_inputs(config_path, overrides, out, stac_url, stac_datetime, max_cloud, quiet, model, **kwargs)
    if tiles_output or tile_km is not None or needs_region(read_aoi(config.aoi)):
        if probabilities:
            raise LczmapError("--probabilities: a region (mapped in tiles) has no probabilities file; leave it out")
        plan = plan_region(config, out, model=model, resolution=resolution, crs=crs, tile_km=tile_km,
                           tiles_output=tiles_output, filter=not no_filter, batch_size=batch_size,
                           nodata_threshold=nodata_threshold, composite=composite, mask_snow=mask_snow,
                           precision=precision)
        summary = map_region(plan, workers=workers, threads=threads, scheduler=scheduler, progress=not quiet,
                             strict_inputs=strict_inputs)
        if not quiet:
            from ..outputs import aoi_shares_text

            folder = Path(out).parent
            click.echo(f"Wrote {', '.join(str(folder / name) for name in summary['outputs'].values())}: {summary['tiles']} tiles in "
                       f"{len(summary['zones'])} UTM zone(s), {summary['mapped_km2']:.1f} km2 with a class; of the AOI's "
                       f"{summary['aoi_km2']:.1f} km2: {aoi_shares_text(summary)}")
        return
    summary = predict_city(
        config, out, model=model, resolution=resolution, crs=crs, batch_size=batch_size,
        workers=workers, threads=threads, scheduler=scheduler, probabilities=probabilities, filter=not no_filter,
        nodata_threshold=nodata_threshold, composite=composite, mask_snow=mask_snow, progress=not quiet,
        precision=precision, strict_inputs=strict_inputs,
    )
    _report(ctx, out, summary)


def _city_inputs(config_path: str | None, overrides: dict, out: str, stac_url: str | None, datetime: str | None,
                 max_cloud: float | None, quiet: bool, model: str | None, catalog: str | None, offline: bool,
                 landcover_year: int | None, **_: object):
    """The city's inputs and the model to map them with. Inputs: city.yaml and the command line's paths, Sentinel-2
    found by --stac-url, and, for a city given on the command line (no --config), every other input it lacks whose
    bands the model reads fetched into the cache (lczmap.fetch); --osm overpass|URL fetches OSM; any other --osm is a
    file, as ever. The model (--model, else lczmap.predict.default_model for the city as given) is resolved before
    anything is fetched: a missing default model fails first, and a Sentinel-2-only one fetches nothing else."""
    from ..card import load_card
    from ..config import load_city_config
    from ..fetch import SOURCES, FetchOptions, fetch_missing, missing_sources
    from ..predict import default_model
    from ..stage import OPTIONAL_BANDS

    osm = overrides["osm"]
    fetch_osm = osm if osm == "overpass" or str(osm).startswith(("http://", "https://")) else None
    if fetch_osm:
        overrides["osm"] = None
    config = load_city_config(config_path, **overrides)
    model = model or default_model(config, offline=offline)
    model_bands = set(load_card(model).bands)
    wanted = set(missing_sources(config)) if config_path is None else set()
    if stac_url is not None:
        wanted.discard("sentinel2")
    if fetch_osm:
        wanted.add("osm")
    wanted -= {key for key, bands in OPTIONAL_BANDS.items() if not set(bands) & model_bands}
    sources = tuple(s for s in SOURCES if s in wanted)
    s2_fetched = "sentinel2" in sources
    config = with_stac_items(config, stac_url, None if s2_fetched else datetime, None if s2_fetched else max_cloud, out)
    if not sources:
        return config, model
    given = {"catalog": catalog, "osm": fetch_osm, "landcover_year": landcover_year,
             "datetime": datetime if s2_fetched else None, "max_cloud": max_cloud if s2_fetched else None}
    options = FetchOptions(**{k: v for k, v in given.items() if v is not None}, offline=offline, sources=sources,
                           progress=not quiet)
    return fetch_missing(config, options), model


def _report(ctx: click.Context, out: str, summary: dict) -> None:
    """The console's line of a map: what the summary says, in its words (lczmap.outputs.CELL_STATES)."""
    from ..outputs import aoi_shares_text

    if not ctx.obj.get("quiet", False):
        top = sorted(summary["classes"].values(), key=lambda c: -c["percent"])[:3]
        classes = ", ".join(f"LCZ {c['lcz']} {c['percent']:.0f}%" for c in top if c["percent"] > 0)
        click.echo(f"Wrote {out}: {summary['mapped_km2']:.1f} km2 with a class ({classes}); of the AOI's "
                   f"{summary['aoi_km2']:.1f} km2: {aoi_shares_text(summary)}; {summary['seconds']['total']:.0f} s")


def demo_city(cache: str | Path | None = None) -> Path:
    """city.yaml of the demo city, generated on first use into `cache` (default config.cache_root())/demo-city."""
    from ..config import cache_root
    from ..demo import CITY_YAML, generate
    from ..errors import LczmapError

    root = Path(cache) if cache else cache_root()
    folder = root / "demo-city"
    if not (folder / CITY_YAML).exists():
        log.info("generating the demo city (seed %d, %g km) into %s, once", DEMO_SEED, DEMO_SIZE_KM, folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LczmapError(f"demo cache {root}: cannot be created ({exc.strerror}); set LCZMAP_CACHE to a writable folder") from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise LczmapError(f"demo cache {root}: not writable; set LCZMAP_CACHE to a writable folder")
        generate(folder, seed=DEMO_SEED, size_km=DEMO_SIZE_KM)
    return folder / CITY_YAML
