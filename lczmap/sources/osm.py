"""OpenStreetMap buildings (.osm / .osm.pbf file, or osmnx download) as building coverage fraction per base pixel.

The file is parsed once (GDAL's OSM driver through pyogrio, layer `multipolygons`, features with a
`building` tag other than `no`) into a GeoPackage with an R-tree spatial index, in the grid CRS, cached
under a name keyed by the file's path, size and time and the grid (`index_folder()`). The plan holds only
that file's path: each chunk reads the buildings that touch its window through the index and GDAL burns
them at 1/10 of the base pixel size (10 x 10 supersampling), all in C with the GIL released, and the
fine pixels are averaged, so the band is the area fraction of each 10 m pixel covered by buildings (to the
nearest 1 %). Pixels outside the extract's declared `<bounds>` (XML files) are nodata; no buildings gives 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry, box
from pyproj import Transformer
from rasterio.features import rasterize

from ..errors import LczmapError, describe
from .base import Source, check_exists
from .gdal_lib import gdal_library
from .network import NETWORK_REQUEST_S, NETWORK_SEARCH_S, with_deadline

log = logging.getLogger(__name__)

SUPERSAMPLE = 10
INDEX_LAYER = "buildings"
_INDEX_VERSION = 1  # bump when the index file's content changes
_build_lock = threading.Lock()


def index_folder() -> Path:
    """Where building indexes are cached: $LCZMAP_CACHE/osm-index, else the system temp folder's lczmap-osm-index.

    A worker that cannot see the file (another host, a cleaned temp folder) rebuilds it from the OSM file.
    """
    root = os.environ.get("LCZMAP_CACHE")
    return Path(root) / "osm-index" if root else Path(tempfile.gettempdir()) / "lczmap-osm-index"


class OsmSource(Source):
    """Building polygons in a spatially indexed file (grid CRS), burnt per chunk into an area-weighted coverage fraction.

    Holds no per-building data: a plan with this source has the same size for a village and a country.
    """

    key = "osm"
    bands = ("osm_buildings",)

    def __init__(self, origin: str, index: str, buildings: int, extent: Any | None, crs: str,
                 bbox: tuple[float, float, float, float], online: bool):
        self.origin = origin
        self.index = index  # GeoPackage with an R-tree, grid CRS coordinates
        self.buildings = buildings
        self.extent = extent  # area the data speaks for (grid CRS); None = everywhere
        self.crs = crs
        self.bbox = bbox  # lon/lat bounds of the grid: what the index was built for
        self.online = online

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        h, w = geobox.shape
        s = SUPERSAMPLE
        if not os.path.exists(self.index):
            _build_index(self.index, self.origin if not self.online else None, self.bbox, self.crs)
        fine = burn_layer(self.index, INDEX_LAYER, geobox, s)
        rows = fine.reshape(h, s, w * s).sum(axis=1, dtype="uint16")  # sum the s sub-rows, then the s sub-columns
        out = (rows.reshape(h, w, s).sum(axis=2, dtype="uint16") / np.float32(s * s))[None].astype("float32")
        if self.extent is not None:
            inside = rasterize([self.extent], out_shape=(h, w), transform=geobox.affine, fill=0, default_value=1, dtype="uint8")
            out[0][inside == 0] = np.nan
        return out

    def files(self) -> list[str]:
        return [] if self.online else [self.origin]

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.origin,
            "crs": "EPSG:4326",
            "resolution_m": None,
            "buildings": self.buildings,
            "band": f"building area fraction per pixel ({SUPERSAMPLE}x{SUPERSAMPLE} supersampling)",
            "extent": "file <bounds>" if self.extent is not None else "whole grid",
        }


def burn_layer(path: str, layer: str, geobox: GeoBox, supersample: int = 1) -> np.ndarray:
    """(h*s, w*s) uint8: 1 where a feature of `layer` covers a fine pixel's centre, on `geobox` refined s times.

    GDAL reads only the features whose box meets the window (through the file's spatial index) and
    rasterises them (GDALRasterizeLayers, the engine of gdal_rasterize) without any Python per feature.
    """
    import ctypes

    gdal = gdal_library()
    h, w = (n * supersample for n in geobox.shape)
    x0, y0, x1, y1 = geobox.boundingbox
    a = geobox.affine
    transform = (ctypes.c_double * 6)(a.c, a.a / supersample, a.b / supersample, a.f, a.d / supersample, a.e / supersample)
    out = np.zeros((h, w), dtype="uint8")
    src = gdal.GDALOpenEx(os.fsencode(path), 0x04 | 0x40, None, None, None)  # GDAL_OF_VECTOR | GDAL_OF_VERBOSE_ERROR
    if not src:
        raise LczmapError(f"{path}: building index cannot be opened")
    dst = None
    try:
        handle = gdal.GDALDatasetGetLayerByName(src, layer.encode())
        gdal.OGR_L_SetSpatialFilterRect(handle, x0, y0, x1, y1)
        dst = gdal.GDALCreate(gdal.GDALGetDriverByName(b"MEM"), b"", w, h, 1, 1, None)  # 1 = GDT_Byte
        gdal.GDALSetGeoTransform(dst, transform)
        layers = (ctypes.c_void_p * 1)(handle)
        bands = (ctypes.c_int * 1)(1)
        burn = (ctypes.c_double * 1)(1.0)
        if gdal.GDALRasterizeLayers(dst, 1, bands, 1, layers, None, None, burn, None, None, None) != 0:
            raise LczmapError(f"{path}: rasterising buildings failed")
        band = gdal.GDALGetRasterBand(dst, 1)
        ptr = out.ctypes.data_as(ctypes.c_void_p)
        if gdal.GDALRasterIO(band, 0, 0, 0, w, h, ptr, w, h, 1, 0, 0) != 0:  # GF_Read, GDT_Byte
            raise LczmapError(f"{path}: reading rasterised buildings failed")
    finally:
        if dst:
            gdal.GDALClose(dst)
        gdal.GDALClose(src)
    return out


def open_osm(path: str | Path | None, base: GeoBox, online: bool = False) -> OsmSource:
    """Buildings for the base grid from an OSM file, or downloaded with osmnx when `path` is None and `online`.

    Builds the spatially indexed building file once (reused while the OSM file and the grid are unchanged).
    """
    lonlat = base.extent.to_crs("EPSG:4326")
    bbox = tuple(float(v) for v in lonlat.boundingbox)
    crs = base.crs.wkt
    if path is None:
        if not online:
            raise LczmapError("no OpenStreetMap input (set 'osm' or osm_online: true)")
        origin, extent, stamp = "OpenStreetMap (osmnx download)", None, ("online",)
    else:
        check_exists(path, "OSM file")
        origin = str(path)
        declared = _xml_bounds(Path(path))
        if declared is not None and not declared.intersects(lonlat):
            raise LczmapError(f"{path}: OSM extract bounds {tuple(round(v, 5) for v in declared.boundingbox)} do not overlap the AOI")
        extent = declared.to_crs(base.crs).geom if declared is not None else None
        st = os.stat(path)
        stamp = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    key = hashlib.sha256(repr((_INDEX_VERSION, *stamp, bbox, crs)).encode()).hexdigest()[:32]
    index = str(index_folder() / f"{key}.gpkg")
    count = _build_index(index, None if path is None else origin, bbox, crs)
    if count == 0:
        log.warning("%s: no buildings inside the city grid; osm_buildings is 0 everywhere", origin)
    return OsmSource(origin, index, count, extent, crs, bbox, online=path is None)


def _build_index(index: str, origin: str | None, bbox: tuple[float, float, float, float], crs: str) -> int:
    """Write the buildings of `origin` (None: download) inside `bbox` to `index` unless it exists; their number.

    Written under a temporary name and renamed, so a reader never sees half a file and concurrent
    builders (threads, processes) are harmless.
    """
    with _build_lock:
        if os.path.exists(index):
            return int(pyogrio.read_info(index, layer=INDEX_LAYER)["features"])
        wkb = _download(box(*bbox, "EPSG:4326")) if origin is None else _read_file(Path(origin), bbox)
        wkb = _to_grid(wkb, crs)
        folder = Path(index).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LczmapError(f"{folder}: building index folder cannot be created ({exc.strerror}); set LCZMAP_CACHE") from None
        tmp = folder / f".{Path(index).stem}.{uuid.uuid4().hex}.gpkg"
        try:
            # No CRS in the file: the coordinates are the grid's, and GDAL then burns them without reprojection.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="'crs' was not provided")
                pyogrio.raw.write(tmp, geometry=wkb, field_data=[], fields=[], layer=INDEX_LAYER, driver="GPKG",
                                  geometry_type="Unknown", crs=None, layer_options={"SPATIAL_INDEX": "YES"})
            os.replace(tmp, index)
        except Exception as exc:  # a full disk or a file-size limit: name the file being written
            raise LczmapError(f"{index}: cannot write the building index ({describe(exc)}); free space or set LCZMAP_CACHE") from None
        finally:
            tmp.unlink(missing_ok=True)
        log.info("indexed %d buildings of %s into %s", wkb.size, origin or "the download", index)
        return int(wkb.size)


def _to_grid(wkb: np.ndarray, crs: str, batch: int = 50_000) -> np.ndarray:
    """Lon/lat WKB polygons -> grid-CRS WKB, in batches so that few live geometries exist at once."""
    to_grid = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    project = lambda xy: np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1]))  # noqa: E731
    parts = []
    for start in range(0, wkb.size, batch):
        geoms = shapely.from_wkb(wkb[start:start + batch], on_invalid="fix")  # None where unfixable (rings cut by the extract)
        geoms = geoms[np.isin(shapely.get_type_id(geoms), (3, 6)) & ~shapely.is_empty(geoms)]  # polygons, multipolygons
        parts.append(shapely.to_wkb(shapely.transform(geoms, project)))
    return np.concatenate(parts) if parts else np.empty(0, object)


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

    ox.settings.requests_timeout = NETWORK_REQUEST_S  # each Overpass request's deadline (osmnx's own: 180 s)
    try:
        frame = with_deadline(lambda: ox.features_from_polygon(lonlat.geom, tags={"building": True}), NETWORK_SEARCH_S,
                              "OpenStreetMap download (Overpass API)")
    except Exception as exc:
        if type(exc).__name__ == "InsufficientResponseError":  # osmnx: the query returned no features
            return np.empty(0, object)
        raise LczmapError(f"OpenStreetMap download for the AOI failed ({describe(exc)}); pass --osm FILE instead") from None
    return shapely.to_wkb(np.asarray(frame.geometry.values, dtype=object))
