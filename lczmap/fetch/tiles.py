"""Tiled global rasters over a city from a STAC catalogue: the Copernicus DEM GLO-30 surface model and the ESA
WorldCover land-cover map, each read by window from the tiles over the area and merged into one GeoTIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from odc.geo.geom import Geometry

from ..errors import LczmapError
from .catalogs import ATTRIBUTION, LICENCE, Collection
from .remote import Asset, NotCached, OffArea, Remote, host_of, write_raster
from .stac import search

# ESA WorldCover's maps: year -> product version.
WORLDCOVER_VERSIONS = {2020: "1.0.0", 2021: "2.0.0"}


def fetch_dem(collection: Collection, region: Geometry, remote: Remote, out: Path) -> tuple[Path, dict[str, Any]]:
    """Copernicus DEM GLO-30 over `region`, merged into the GeoTIFF `out` (EPSG:4326, 1 arc-second)."""
    return _fetch_mosaic(collection, "dem", region, None, lambda item: True, remote, out, "elevation")


def fetch_landcover(collection: Collection, region: Geometry, year: int, remote: Remote, out: Path) -> tuple[Path, dict[str, Any]]:
    """ESA WorldCover of `year` (2020 or 2021) over `region`, merged into the GeoTIFF `out`."""
    if year not in WORLDCOVER_VERSIONS:
        raise LczmapError(f"--landcover-year {year}: ESA WorldCover exists for {', '.join(map(str, WORLDCOVER_VERSIONS))}")
    version = WORLDCOVER_VERSIONS[year]

    def of_year(item: dict[str, Any]) -> bool:
        stated = (item.get("properties") or {}).get("esa_worldcover:product_version")
        return stated is None or str(stated) == version

    return _fetch_mosaic(collection, "landcover", region, f"{year}-01-01/{year}-12-31", of_year,
                         remote, out, "Map")


def _fetch_mosaic(collection: Collection, source: str, region: Geometry, datetime: str | None,
                  keep, remote: Remote, out: Path, description: str) -> tuple[Path, dict[str, Any]]:
    key = collection.assets["data"]
    items = search(collection, region.to_crs("EPSG:4326").geom, datetime, remote.settings,
                   keep=lambda item: keep(item) and key in (item.get("assets") or {}))
    if not items:
        where = "in the cache" if remote.settings.offline else f"at {collection.url}"
        raise (NotCached if remote.settings.offline else LczmapError)(f"no {collection.id} tiles over the AOI {where}")
    assets = [Asset(host_of(collection.url), collection.id, item["id"], key, str(item["assets"][key]["href"])) for item in items]
    grids, failed = remote.read(assets, region, collection.id)
    missing = [a for a in assets if a in failed and not isinstance(failed[a], OffArea)]
    if missing:  # a tile that cannot be read leaves a hole: the source is not complete, so it is missing
        raise type(failed[missing[0]])(str(failed[missing[0]]))
    parts = [(a, grids[a]) for a in assets if a not in failed]
    data, transform, crs, nodata = remote.mosaic(parts, region)
    write_raster(out, data, transform, crs, nodata, description=description)
    provenance = {
        "catalog": collection.url, "collection": collection.id,
        "items": [{"id": a.item, "url": a.href.split("?", 1)[0]} for a, _ in parts],
        "licence": LICENCE[source], "attribution": ATTRIBUTION[source],
    }
    if datetime:
        provenance["datetime"] = datetime
    return out, provenance
