"""Reusable click options shared by several commands (rio-style option objects), and validated value types.

The types apply the same rules as the YAML schemas (lczmap.config's check_* functions), so a value is
refused alike on the command line and in city.yaml or a pipeline; a refused value is one line
`Error: --option value: reason` with exit code 1 (see LczmapGroup).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


class Checked(click.ParamType):
    """A click type whose value must pass one of lczmap.config's rules (imported lazily: --help stays fast)."""

    def __init__(self, name: str, rule: str, convert_first: Callable[[str], Any] = str):
        self.name, self._rule, self._convert_first = name, rule, convert_first

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from .. import config

        try:
            return getattr(config, self._rule)(self._convert_first(value) if isinstance(value, str) else value)
        except ValueError as exc:
            self.fail(f"{value}: {exc}", param, ctx)


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


RESOLUTION = Checked("metres", "check_resolution", _number)
CRS_TYPE = Checked("crs", "check_crs")
SCHEDULER = Checked("address", "check_scheduler")

config_opt = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), default=None,
    help="City input file (city.yaml); paths in it are relative to it.",
)
aoi_opt = click.option("--aoi", type=click.Path(), default=None, help="Area of interest (GeoJSON, GeoPackage, shapefile; any CRS).")
s2_opt = click.option("--s2", "sentinel2", type=click.Path(), multiple=True, help="Sentinel-2 L2A product: .SAFE folder, folder of band GeoTIFFs, multi-band GeoTIFF, STAC Item or ItemCollection JSON, or a folder of these; repeat for several products (composited).")
dsm_opt = click.option("--dsm", type=click.Path(), default=None, help="Digital surface model GeoTIFF (any CRS).")
dtm_opt = click.option("--dtm", type=click.Path(), default=None, help="Digital terrain model GeoTIFF; with it the DSM band is height above ground.")
dsm_height_opt = click.option("--dsm-height", type=Checked("mode", "check_dsm_height"), default=None,
                              help="What a DSM without --dtm holds: derive (a surface model; its ground is derived and "
                                   "the band is the height above it; the default) or given (already height above ground).")
landcover_opt = click.option("--landcover", type=click.Path(), default=None, help="Categorical land-cover raster (ESA WorldCover codes by default).")
osm_opt = click.option("--osm", type=click.Path(), default=None, help="OpenStreetMap buildings: .osm or .osm.pbf file.")
vhr_opt = click.option("--vhr", type=click.Path(), default=None, help="Very-high-resolution RGB GeoTIFF (DF4LCZ's second stream).")
# One meaning everywhere (lczmap.cluster): --workers = local worker processes, --threads = threads of each
# (or of the threaded scheduler when there are no workers), --scheduler = a running cluster.
workers_opt = click.option("--workers", type=click.IntRange(min=1), default=None,
                           help="Worker processes of a local Dask cluster (default: none, the threaded scheduler in this process).")
threads_opt = click.option("--threads", type=click.IntRange(min=1), default=None,
                           help="Threads per worker process with --workers (default 1), else of the threaded scheduler (default: one per core).")
tiles_opt = click.option("--tiles", "tiles_output", is_flag=True,
                         help="Map as a region of tiles and deliver one VRT per UTM zone over the tile COGs instead of one mosaic.")
tile_km_opt = click.option("--tile-km", type=click.FloatRange(min=0, min_open=True), default=None,
                           help="Map as a region of tiles of this size in km, on a fixed grid per UTM zone "
                                "(default: AOIs wider than 400 km, in 32 km tiles).")
scheduler_opt = click.option("--scheduler", type=SCHEDULER, default=None, help="Address of a running Dask scheduler, e.g. tcp://host:8786.")


def city_input_options(f):
    """--config plus every per-source path override, in a fixed order."""
    for opt in reversed((config_opt, aoi_opt, s2_opt, dsm_opt, dtm_opt, dsm_height_opt, landcover_opt, osm_opt, vhr_opt)):
        f = opt(f)
    return f


def city_overrides(kwargs: dict) -> dict:
    """Pop the per-source overrides from a command's kwargs, keyed as CityConfig fields (--s2: one path or a tuple)."""
    overrides = {k: kwargs.pop(k) for k in ("aoi", "sentinel2", "dsm", "dtm", "dsm_height", "landcover", "osm", "vhr")}
    s2 = overrides["sentinel2"] or ()
    overrides["sentinel2"] = None if not s2 else s2[0] if len(s2) == 1 else tuple(s2)
    return overrides


def _checked_datetime(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--datetime parsed as dates as soon as it is given, so a wrong one is refused before anything else runs."""
    if value is not None:
        from ..sources.sentinel2.stac import parse_datetime  # the Sentinel-2 readers: imported only when it is given

        parse_datetime(value)
    return value


def composite_options(f):
    """--composite, --mask-snow and the optional online search (--stac-url, --datetime, --max-cloud)."""
    opts = (
        click.option("--composite", type=click.Choice(["median", "best"]), default="median", show_default=True,
                     help="Combine several Sentinel-2 products per pixel: median of the clear observations, or the "
                          "clear observation of the least cloudy product."),
        click.option("--mask-snow", is_flag=True, help="Also treat SCL snow/ice (11) as an invalid observation."),
        click.option("--stac-url", default=None, help="Search this STAC API (or static catalog) for Sentinel-2 L2A "
                     "items over the AOI and composite them (windowed COG reads; off by default)."),
        click.option("--datetime", "stac_datetime", default=None, callback=_checked_datetime,
                     help="Sentinel-2 search (--stac-url, or the search predict --aoi makes for a missing --s2): an RFC 3339 date range, e.g. 2023-01-01/2023-12-31, ../2024-01-31 or one date."),
        click.option("--max-cloud", type=click.FloatRange(0, 100), default=None, help="Sentinel-2 search (as --datetime): the largest eo:cloud_cover (%) of an item."),
    )
    for opt in reversed(opts):
        f = opt(f)
    return f


def with_stac_items(config, url: str | None, datetime: str | None, max_cloud: float | None, out: str):
    """`config` with the items a STAC search finds added to its Sentinel-2 products (written to `<out>.stac-items.json`)."""
    from ..errors import LczmapError

    if url is None:
        if datetime is not None or max_cloud is not None:
            raise LczmapError("--datetime/--max-cloud: they filter a STAC search; give --stac-url too")
        return config
    import dataclasses
    from pathlib import Path

    from ..aoi import read_aoi
    from ..fetch.stac import write_items
    from ..sources.sentinel2 import as_paths

    found = write_items(url, read_aoi(config.aoi), Path(f"{out}.stac-items.json"), datetime=datetime, max_cloud=max_cloud)
    products = (*as_paths(config.sentinel2), str(found))
    return dataclasses.replace(config, sentinel2=Path(products[0]) if len(products) == 1 else tuple(map(Path, products)))
