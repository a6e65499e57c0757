"""OpenStreetMap buildings (.osm / .osm.pbf file, or osmnx download) as building coverage fraction per base pixel.

The file is parsed once when planning (GDAL's OSM driver through pyogrio, layer `multipolygons`, features
with a `building` tag other than `no`); the polygons, projected to the grid CRS, travel with the plan.
Each chunk burns the polygons that touch it at 1/10 of the base pixel size (10 x 10 supersampling) and
averages, so the band is the area fraction of each 10 m pixel covered by buildings (to the nearest 1 %).
Pixels outside the extract's declared `<bounds>` (XML files) are nodata; a file without buildings gives 0.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from pyproj import Transformer
from rasterio.features import rasterize

from ..errors import LczmapError
from .base import Source, check_exists

log = logging.getLogger(__name__)

SUPERSAMPLE = 10
_BATCH = 5000


class OsmSource(Source):
    """Building polygons in the grid CRS (as WKB, compact), rasterised per chunk to an area-weighted coverage fraction."""

    key = "osm"
    bands = ("osm_buildings",)

    def __init__(self, origin: str, wkb: np.ndarray, bounds: np.ndarray, extent: Any | None, crs: str):
        self.origin = origin
        self.wkb = wkb  # object array of bytes: a third of the memory of live shapely geometries
        self.bounds = bounds
        self.extent = extent  # area the data speaks for (grid CRS); None = everywhere
        self.crs = crs

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        h, w = geobox.shape
        x0, y0, x1, y1 = geobox.boundingbox
        b = self.bounds
        hits = self.wkb[(b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0)]
        out = np.zeros((1, h, w), dtype="float32")
        if hits.size:
            s = SUPERSAMPLE
            fine = np.zeros((h * s, w * s), dtype="uint8")
            for start in range(0, hits.size, _BATCH):  # GDAL holds a converted copy of every shape it burns at once
                rasterize(shapely.from_wkb(hits[start:start + _BATCH]), out=fine,
                          transform=geobox.affine @ Affine.scale(1 / s), default_value=1)
            rows = fine.reshape(h, s, w * s).sum(axis=1, dtype="uint16")  # sum the s sub-rows, then the s sub-columns
            out[0] = rows.reshape(h, w, s).sum(axis=2, dtype="uint16") / np.float32(s * s)
        if self.extent is not None:
            inside = rasterize([self.extent], out_shape=(h, w), transform=geobox.affine, fill=0, default_value=1, dtype="uint8")
            out[0][inside == 0] = np.nan
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.origin,
            "crs": "EPSG:4326",
            "resolution_m": None,
            "buildings": int(self.wkb.size),
            "band": f"building area fraction per pixel ({SUPERSAMPLE}x{SUPERSAMPLE} supersampling)",
            "extent": "file <bounds>" if self.extent is not None else "whole grid",
        }


def open_osm(path: str | Path | None, base: GeoBox, online: bool = False) -> OsmSource:
    """Buildings for the base grid from an OSM file, or downloaded with osmnx when `path` is None and `online`."""
    lonlat = base.extent.to_crs("EPSG:4326")
    if path is None:
        if not online:
            raise LczmapError("no OpenStreetMap input (set 'osm' or osm_online: true)")
        origin, extent = "OpenStreetMap (osmnx download)", None
        wkb = _download(lonlat)
    else:
        check_exists(path, "OSM file")
        origin = str(path)
        declared = _xml_bounds(Path(path))
        if declared is not None and not declared.intersects(lonlat):
            raise LczmapError(f"{path}: OSM extract bounds {tuple(round(v, 5) for v in declared.boundingbox)} do not overlap the AOI")
        wkb = _read_file(Path(path), lonlat.boundingbox)
        extent = declared.to_crs(base.crs).geom if declared is not None else None
    wkb, bounds = _to_grid(wkb, base.crs.wkt)
    if wkb.size == 0:
        log.warning("%s: no buildings inside the city grid; osm_buildings is 0 everywhere", origin)
    return OsmSource(origin, wkb, bounds, extent, base.crs.wkt)


def _to_grid(wkb: np.ndarray, crs: str, batch: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat WKB polygons -> grid-CRS WKB and bounds, in batches so that few live geometries exist at once."""
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    project = lambda xy: np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1]))  # noqa: E731
    parts, bounds = [], []
    for start in range(0, wkb.size, batch):
        geoms = shapely.from_wkb(wkb[start:start + batch])
        geoms = geoms[np.isin(shapely.get_type_id(geoms), (3, 6)) & ~shapely.is_empty(geoms)]  # polygons, multipolygons
        geoms = shapely.transform(geoms, project)
        parts.append(shapely.to_wkb(geoms))
        bounds.append(shapely.bounds(geoms).reshape(-1, 4))
    if not parts:
        return np.empty(0, object), np.empty((0, 4))
    return np.concatenate(parts), np.concatenate(bounds)


def _read_file(path: Path, bbox: tuple[float, float, float, float]) -> np.ndarray:
    """WKB of the building polygons in the file, lon/lat."""
    previous = pyogrio.get_gdal_config_option("OSM_MAX_TMPFILE_SIZE")
    # GDAL keeps the OSM node index in RAM up to this many MB (default 100) before spilling to a temp file
    pyogrio.set_gdal_config_options({"OSM_MAX_TMPFILE_SIZE": 10})
    try:
        _, _, wkb, _ = pyogrio.raw.read(
            path, layer="multipolygons", columns=[], where="building IS NOT NULL AND building <> 'no'", bbox=tuple(bbox),
        )
    except Exception as exc:  # pyogrio raises DataSourceError, DataLayerError, FieldError...: all mean "not OSM"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LczmapError(f"{path}: not an OpenStreetMap .osm/.osm.pbf file GDAL can read ({reason})") from None
    finally:
        pyogrio.set_gdal_config_options({"OSM_MAX_TMPFILE_SIZE": previous})
    return wkb if wkb is not None else np.empty(0, object)


def _xml_bounds(path: Path) -> Geometry | None:
    """The `<bounds>` element an XML extract declares near its start (osmium, JOSM, the OSM API write one)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("utf-8", errors="replace")
    except OSError as exc:
        raise LczmapError(f"{path}: OSM file cannot be read ({exc.strerror})") from None
    tag = re.search(r"<bounds\s([^>]*)/?>", head)
    if not tag:
        return None
    attrs = dict(re.findall(r'(\w+)\s*=\s*["\']([^"\']*)["\']', tag.group(1)))
    try:
        return box(float(attrs["minlon"]), float(attrs["minlat"]), float(attrs["maxlon"]), float(attrs["maxlat"]), "EPSG:4326")
    except (KeyError, ValueError):
        return None


def _download(lonlat: Geometry) -> np.ndarray:
    """WKB of the AOI's building polygons from the Overpass API (osmnx), lon/lat."""
    import osmnx as ox

    try:
        frame = ox.features_from_polygon(lonlat.geom, tags={"building": True})
    except Exception as exc:
        if type(exc).__name__ == "InsufficientResponseError":  # osmnx: the query returned no features
            return np.empty(0, object)
        raise LczmapError(f"OpenStreetMap download for the AOI failed ({exc}); pass --osm FILE instead") from None
    return shapely.to_wkb(np.asarray(frame.geometry.values, dtype=object))
