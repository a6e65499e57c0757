"""Reusable click options shared by several commands (rio-style option objects)."""

from __future__ import annotations

import click

config_opt = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="City input file (city.yaml); paths in it are relative to it.",
)
aoi_opt = click.option("--aoi", type=click.Path(), default=None, help="Area of interest (GeoJSON, GeoPackage, shapefile; any CRS).")
s2_opt = click.option("--s2", "sentinel2", type=click.Path(), default=None, help="Sentinel-2 L2A: .SAFE folder, folder of band GeoTIFFs, multi-band GeoTIFF or STAC Item JSON.")
dsm_opt = click.option("--dsm", type=click.Path(), default=None, help="Digital surface model GeoTIFF (any CRS).")
dtm_opt = click.option("--dtm", type=click.Path(), default=None, help="Digital terrain model GeoTIFF; with it the DSM band is height above ground.")
landcover_opt = click.option("--landcover", type=click.Path(), default=None, help="Categorical land-cover raster (ESA WorldCover codes by default).")
osm_opt = click.option("--osm", type=click.Path(), default=None, help="OpenStreetMap buildings: .osm or .osm.pbf file.")
vhr_opt = click.option("--vhr", type=click.Path(), default=None, help="Very-high-resolution RGB GeoTIFF (DF4LCZ's second stream).")
workers_opt = click.option("--workers", type=click.IntRange(min=1), default=None, help="Dask workers on this machine (default: the threaded scheduler).")
scheduler_opt = click.option("--scheduler", default=None, help="Address of a running Dask scheduler, e.g. tcp://host:8786.")


def city_input_options(f):
    """--config plus every per-source path override, in a fixed order."""
    for opt in reversed((config_opt, aoi_opt, s2_opt, dsm_opt, dtm_opt, landcover_opt, osm_opt, vhr_opt)):
        f = opt(f)
    return f


def city_overrides(kwargs: dict) -> dict:
    """Pop the per-source overrides from a command's kwargs, keyed as CityConfig fields."""
    return {k: kwargs.pop(k) for k in ("aoi", "sentinel2", "dsm", "dtm", "landcover", "osm", "vhr")}
