"""Read an area of interest (GeoJSON, GeoPackage, shapefile; any CRS) into one valid polygonal geometry."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from odc.geo.geom import Geometry
from pyproj import CRS
from shapely.geometry import MultiPolygon, Polygon

from .config import check_small_file
from .errors import LczmapError, reading

log = logging.getLogger(__name__)

MAX_VECTOR_BYTES = 512 << 20  # an AOI or a file of training areas; a bigger file is the wrong input (or a device)


def read_aoi(path: str | Path) -> Geometry:
    """Union of all polygons in the file, made valid, as an odc-geo Geometry in the file's CRS.

    GeoJSON without a CRS is EPSG:4326 (RFC 7946). Z coordinates are dropped (KML, 3-D GeoJSON), and a 3-D or
    compound CRS becomes its horizontal part; a CRS with no horizontal part (vertical, geocentric) is refused.
    Points and lines are refused, invalid rings are repaired (a message says so), an empty result is refused.
    """
    path = Path(path)
    with reading(path, "AOI"):  # shapely/pyproj/pyogrio failures on odd geometry become one line naming the file
        return _read_aoi(path)


def _read_aoi(path: Path) -> Geometry:
    frame = read_vector(path, "AOI")
    crs = frame.crs
    if crs is None:
        if path.suffix.lower() in {".geojson", ".json"}:
            crs = "EPSG:4326"
        else:
            raise LczmapError(f"{path}: the AOI has no CRS; add a .prj or save it with one")
    parsed = CRS.from_user_input(crs)
    flat = _horizontal(path, parsed)
    if flat != parsed:
        crs = flat
    if flat.is_geographic:
        bounds = frame.total_bounds
        if not (np.all(np.isfinite(bounds)) and -180 <= bounds[0] <= bounds[2] <= 360 and -90 <= bounds[1] <= bounds[3] <= 90):
            raise LczmapError(f"{path}: AOI coordinates {_fmt(bounds)} are not longitude/latitude in degrees; "
                              "GeoJSON without a 'crs' member is EPSG:4326 (save it with its CRS)")
    geoms = [g for g in frame.geometry if g is not None and not g.is_empty]
    polygons = [g for g in geoms if isinstance(g, (Polygon, MultiPolygon))]
    if len(polygons) < len(geoms):
        raise LczmapError(f"{path}: the AOI must contain polygons only, found {sorted({g.geom_type for g in geoms})}")
    if not polygons:
        raise LczmapError(f"{path}: the AOI has no polygon geometry")
    union = shapely.union_all([_repaired(path, p) for p in polygons])
    union = _polygonal_part(union)
    if union.is_empty or union.area == 0:
        raise LczmapError(f"{path}: the AOI polygon is empty (zero area)")
    return Geometry(union, crs=str(crs) if not hasattr(crs, "to_wkt") else crs.to_wkt())


def _horizontal(path: Path, crs: CRS) -> CRS:
    """The horizontal 2-D part of the AOI's CRS (of a 3-D or compound one); refused when it has none."""
    flat = crs.to_2d()
    if not (flat.is_geographic or flat.is_projected) or len(flat.axis_info) != 2:
        raise LczmapError(f"{path}: the AOI's CRS {crs.name} ({crs.type_name}) has no horizontal coordinates; "
                          "save the AOI in a geographic or projected CRS such as EPSG:4326")
    return flat


def read_vector(path: Path, what: str) -> gpd.GeoDataFrame:
    """A vector file's features, 2-D (Z coordinates dropped); a missing, unreadable or empty file is one LczmapError
    naming it, and so is a device, a FIFO or a file of more than MAX_VECTOR_BYTES (checked before reading)."""
    if not path.exists():
        raise LczmapError(f"{path}: {what} file does not exist")
    if path.is_dir() and path.suffix.lower() not in {".gdb", ".shp"}:  # a file geodatabase is a folder
        raise LczmapError(f"{path}: the {what} is a folder; name the vector file (GeoJSON, GeoPackage, shapefile)")
    if not path.is_dir():
        check_small_file(path, what, MAX_VECTOR_BYTES, rule=f"the {what} file may be at most {MAX_VECTOR_BYTES >> 20} MiB")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types; the user needs the file name and reason
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if path.suffix.lower() in {".geojson", ".json"}:
            _raise_if_bad_json(path)
        raise LczmapError(f"{path}: cannot read the {what} as a vector file ({reason})") from None
    if frame.empty:
        raise LczmapError(f"{path}: the {what} file has no features")
    if frame.geometry.has_z.any():  # heights of an outline (KML, 3-D GeoJSON) mean nothing to a map's area
        frame = frame.set_geometry(frame.geometry.force_2d())
    return frame


def _raise_if_bad_json(path: Path) -> None:
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LczmapError(f"{path}: not valid GeoJSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("type") not in {"FeatureCollection", "Feature", "Polygon", "MultiPolygon"}:
        raise LczmapError(f"{path}: not valid GeoJSON (no FeatureCollection, Feature or Polygon)")


def _repaired(path: Path, geom):
    if geom.is_valid:
        return geom
    log.warning("%s: AOI geometry is invalid (%s); repaired with make_valid", path, shapely.is_valid_reason(geom))
    return _polygonal_part(shapely.make_valid(geom))


def _polygonal_part(geom):
    """Keep the polygons of a geometry collection (make_valid can add stray lines)."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else Polygon()


def _fmt(bounds) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in bounds) + ")"
