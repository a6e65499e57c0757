"""`lczmap fetch`: every input of a city from its AOI alone, into a folder with a city.yaml; and the fetch options
that `predict` shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import cli

# The shared options' parameter names -> FetchOptions fields.
FETCH_FIELDS = {"catalog": "catalog", "fetch_datetime": "datetime", "fetch_max_cloud": "max_cloud", "fetch_osm": "osm",
                "offline": "offline", "landcover_year": "landcover_year"}


# --catalog, --offline and --landcover-year: shared as they are by `fetch` and `predict` (whose --datetime,
# --max-cloud and --osm, older than fetching, serve both its STAC search and its fetching).
catalog_opt = click.option("--catalog", default=None, metavar="NAME|URL",
                           help="Where to fetch missing inputs: earth-search (default), planetary-computer, or the URL "
                                "of a STAC API (or static catalog) laid out like them.")
offline_opt = click.option("--offline", is_flag=True, help="Use the cache only; name everything that is not cached.")
landcover_year_opt = click.option("--landcover-year", type=click.IntRange(2020, 2021), default=None,
                                  help="The ESA WorldCover map to fetch (2020 or 2021, the default).")


def source_options(f):
    """--catalog, --offline, --landcover-year."""
    for opt in reversed((catalog_opt, offline_opt, landcover_year_opt)):
        f = opt(f)
    return f


def fetch_options(f):
    """--catalog, --datetime, --max-cloud, --osm, --offline, --landcover-year (read them with `fetch_options_from`)."""
    opts = (
        click.option("--datetime", "fetch_datetime", default=None, metavar="START/END",
                     help="Sentinel-2 dates, e.g. 2023-01-01/2023-12-31 (default: the 12 months before today)."),
        click.option("--max-cloud", "fetch_max_cloud", type=click.FloatRange(0, 100), default=None,
                     help="The cloudiest Sentinel-2 Item to use (eo:cloud_cover, %; default 50)."),
        click.option("--osm", "fetch_osm", default=None, metavar="overpass|URL|FILE",
                     help="OpenStreetMap buildings: the Overpass API (default), or a PBF extract by URL or file "
                          "(clipped to the AOI)."),
    )
    for opt in reversed(opts):
        f = opt(f)
    return source_options(f)


def fetch_options_from(kwargs: dict[str, Any], progress: bool, **more: Any):
    """Pop the shared fetch options from a command's kwargs into a FetchOptions (`more`: other fields); options not
    given keep FetchOptions' defaults."""
    from ..fetch import FetchOptions

    given = {field: kwargs.pop(key) for key, field in FETCH_FIELDS.items()}
    more = {k: v for k, v in more.items() if v is not None}
    return FetchOptions(**{k: v for k, v in given.items() if v is not None}, progress=progress, **more)


@cli.command("fetch")
@click.option("--aoi", required=True, type=click.Path(dir_okay=False), help="Area of interest (GeoJSON, GeoPackage, shapefile).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the inputs and city.yaml.")
@fetch_options
@click.option("--min-clear", type=click.IntRange(min=1), default=None,
              help="Clear Sentinel-2 observations wanted per pixel (default 3): Items are added, least cloudy first, "
                   "until every pixel has them.")
@click.option("--max-items", type=click.IntRange(min=1), default=None, help="Sentinel-2 Items at most (default 12).")
@click.pass_context
def fetch_cmd(ctx: click.Context, aoi: str, out: str, min_clear: int | None, max_items: int | None, **kwargs: Any) -> None:
    """Fetch Sentinel-2 L2A, the Copernicus DEM, ESA WorldCover and OpenStreetMap over AOI (plus the patch margin)
    into OUT, and write OUT/city.yaml with the provenance of every file; `lczmap predict --config OUT/city.yaml`
    then maps the city offline. Downloads go through one cache ($LCZMAP_CACHE or ~/.cache/lczmap): a rerun, or
    another AOI overlapping this one, reads only what is not cached yet."""
    from ..fetch import fetch_city

    options = fetch_options_from(kwargs, progress=not ctx.obj.get("quiet"), min_clear=min_clear, max_items=max_items)
    click.echo(str(fetch_city(Path(aoi), Path(out), options)))
