"""Derive a city's processing grids from its AOI: a 10 m base grid and an aligned output grid in the AOI's UTM zone;
and the UTM zone strips a region is cut along."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry
from pyproj import Transformer
from rasterio.features import rasterize

from .errors import LczmapError

log = logging.getLogger(__name__)

BASE_RESOLUTION = 10.0
OUTPUT_RESOLUTION = 100.0
DEFAULT_PATCH = 48


@dataclass(frozen=True)
class CityGrid:
    """The contract between stages: where every base pixel and every output cell lies.

    `base` covers `output` exactly, padded by `halo` base pixels on every side, so that each output
    cell's patch window (centred on the cell) lies inside the base grid. Output cell edges coincide
    with base pixel edges: cell (i, j) is base block [halo + i*factor, halo + (i+1)*factor).
    """

    aoi: Geometry
    output: GeoBox
    base: GeoBox
    halo: int

    @property
    def crs(self) -> CRS:
        return self.output.crs

    @property
    def factor(self) -> int:
        return round(self.output.resolution.x / self.base.resolution.x)

    def patch_start(self, patch: int) -> int:
        """Base-pixel offset of output cell (0, 0)'s patch window, per axis."""
        return self.halo + self.factor // 2 - patch // 2

    def window(self, rows: slice, cols: slice, patch: int) -> tuple[slice, slice]:
        """Base-grid slices that hold the patch windows of output cells `rows` x `cols`."""
        start = self.patch_start(patch)
        f = self.factor
        return (
            slice(start + rows.start * f, start + (rows.stop - 1) * f + patch),
            slice(start + cols.start * f, start + (cols.stop - 1) * f + patch),
        )

    def output_blocks(self, size: int) -> list[tuple[slice, slice]]:
        """Split the output grid into blocks of at most size x size cells (the unit of parallel work), row by row."""
        tiles = GeoboxTiles(self.output, (size, size))
        return [tiles.roi[iy, ix] for iy in range(tiles.shape.y) for ix in range(tiles.shape.x)]

    @cached_property
    def aoi_mask(self) -> np.ndarray:
        """Output cells whose centre lies inside the AOI (True inside)."""
        return rasterize(
            [self.aoi.geom], out_shape=self.output.shape, transform=self.output.affine,
            fill=0, default_value=1, dtype="uint8",
        ).astype(bool)


def utm_crs(aoi: Geometry) -> CRS:
    """The WGS 84 UTM zone of the AOI's centroid, with the MGRS exceptions Sentinel-2 tiles follow."""
    lon, lat = to_lonlat(aoi).centroid.points[0]
    return CRS(f"EPSG:{(32600 if lat >= 0 else 32700) + utm_zone(lon, lat)}")


def utm_zone(lon: float, lat: float) -> int:
    """UTM zone number 1-60, including the Norway (32V) and Svalbard (31X-37X) exceptions."""
    lon = (lon + 180.0) % 360.0 - 180.0
    zone = int((lon + 180) // 6) % 60 + 1
    if 56 <= lat < 64 and 3 <= lon < 12:
        return 32
    if 72 <= lat < 84 and 0 <= lon < 42:
        return 31 if lon < 9 else 33 if lon < 21 else 35 if lon < 33 else 37
    return zone


def to_lonlat(aoi: Geometry) -> Geometry:
    """The AOI in EPSG:4326, parts across the antimeridian shifted to one side (longitudes may exceed 180)."""
    ll = aoi.to_crs("EPSG:4326")
    minx, _, maxx, _ = ll.boundingbox
    if maxx - minx > 180:  # split at the antimeridian: move the western parts east by 360 degrees
        shifted = shapely.transform(ll.geom, lambda xy: np.where(xy[:, :1] < 0, xy + [360.0, 0.0], xy))
        ll = Geometry(shifted, "EPSG:4326")
    return ll


def city_grid(
    aoi: Geometry,
    resolution: float = OUTPUT_RESOLUTION,
    base_resolution: float = BASE_RESOLUTION,
    crs: str | CRS | None = None,
    patch: int = DEFAULT_PATCH,
) -> CityGrid:
    """Grids for an AOI: output cells snapped to multiples of `resolution`, base grid padded by half a patch."""
    factor = resolution / base_resolution
    if resolution <= 0 or base_resolution <= 0 or abs(factor - round(factor)) > 1e-9 or round(factor) < 1:
        raise LczmapError(
            f"--resolution {resolution:g} m must be a positive multiple of the {base_resolution:g} m base grid"
        )
    target = CRS(crs) if crs is not None else utm_crs(aoi)
    if target.geographic:
        raise LczmapError(f"--crs {target}: the processing grid needs a projected CRS in metres (maps can be written in EPSG:4326)")
    local = to_lonlat(aoi).to_crs(target) if aoi.crs.geographic else aoi.to_crs(target)
    minx, miny, maxx, maxy = local.boundingbox
    output = GeoBox.from_bbox((minx, miny, maxx, maxy), target, resolution=resolution)
    if not _holds_cell_centre(local, output):
        local = _touched_cells(local, output)
    f = round(factor)
    base_affine = output.affine @ Affine.scale(1 / f)
    halo = math.ceil(patch / 2)
    base = GeoBox((output.shape[0] * f, output.shape[1] * f), base_affine, target).pad(halo)
    return CityGrid(aoi=local, output=output, base=base, halo=halo)


# Output grids up to this many cells are checked for an AOI that holds no cell centre (a rasterised uint8 mask of
# at most 16 MiB, some 50 ms); a grid that wide belongs to an AOI hundreds of kilometres across, an area, not a hairline.
MAX_CENTRE_CHECK_CELLS = 1 << 24


def _holds_cell_centre(aoi: Geometry, output: GeoBox) -> bool:
    """True when some output cell's centre lies in the AOI (the cells a map covers; see CityGrid.aoi_mask)."""
    if output.shape[0] * output.shape[1] > MAX_CENTRE_CHECK_CELLS:
        return True
    return bool(rasterize([aoi.geom], out_shape=output.shape, transform=output.affine, fill=0, default_value=1,
                          dtype="uint8").any())


def _touched_cells(aoi: Geometry, output: GeoBox) -> Geometry:
    """The output cells an AOI touches, as one geometry: the AOI a map covers when the AOI holds no cell centre
    (a 1 m2 square, a hairline polygon), so it maps the cells it lies in rather than nothing."""
    touched = rasterize([aoi.geom], out_shape=output.shape, transform=output.affine, fill=0, default_value=1,
                        dtype="uint8", all_touched=True)
    rows, cols = np.nonzero(touched)
    cells = [shapely.box(*output[r:r + 1, c:c + 1].boundingbox) for r, c in zip(rows.tolist(), cols.tolist())]
    log.info("the AOI holds no centre of a %g m cell; mapping the %d cell(s) it touches", abs(output.resolution.x),
             len(cells))
    return Geometry(shapely.union_all(cells), aoi.crs)


# ---- the size of a plan, from the AOI's bounds alone (checked before any pixel is read or any list is built) ----

# The widest AOI mapped as one grid (a city's); a wider one is a region of tiles (lczmap.region), and is too big
# for one stack (`lczmap stage`): 400 km is a stack of 40 000 x 40 000 pixels at 10 m, some 80 GB.
MAX_GRID_EXTENT_M = 400_000
# The most tiles one region's plan holds: 4.2 million km2 (the European Union's area) in 32 km tiles, cut in
# well under a minute; a bigger AOI is mapped in parts, or in larger tiles.
MAX_REGION_TILES = 4096
# Bytes of one base pixel in a stack: 13 float32 bands (lczmap.stage.BANDS).
STACK_BYTES_PER_PIXEL = 13 * 4


@dataclass(frozen=True)
class PlanSize:
    """An AOI's extent in its own UTM zone, and what it costs: base pixels (a stack), tiles (a region)."""

    width_m: float
    height_m: float

    @property
    def extent_m(self) -> float:
        return max(self.width_m, self.height_m)

    @property
    def base_pixels(self) -> int:
        return math.ceil(self.width_m / BASE_RESOLUTION) * math.ceil(self.height_m / BASE_RESOLUTION)

    def tiles(self, tile_km: float) -> int:
        """About how many tiles of `tile_km` cover the AOI's bounds (a region's plan; lczmap.region.plan_tiles)."""
        side = tile_km * 1000
        return (math.floor(self.width_m / side) + 1) * (math.floor(self.height_m / side) + 1)

    def describe(self) -> str:
        """'W x H km, A km2 in its bounds', for messages."""
        return (f"{self.width_m / 1000:.0f} x {self.height_m / 1000:.0f} km, "
                f"{self.width_m * self.height_m / 1e6:.3g} km2 in its bounds")


def plan_size(aoi: Geometry) -> PlanSize:
    """The AOI's bounds in the UTM zone of its centroid: a plan's size, known before any grid or list is made."""
    minx, miny, maxx, maxy = to_lonlat(aoi).to_crs(utm_crs(aoi)).boundingbox
    return PlanSize(maxx - minx, maxy - miny)


def check_stack_size(aoi: Geometry, where: str | Path) -> PlanSize:
    """Refuse (one LczmapError naming `where`, the AOI file) an AOI too wide for one stack; else its PlanSize."""
    size = plan_size(aoi)
    if size.extent_m > MAX_GRID_EXTENT_M:
        raise LczmapError(
            f"--aoi {where}: {size.describe()}, a stack of {size.base_pixels:.3g} pixels at {BASE_RESOLUTION:g} m "
            f"(about {size.base_pixels * STACK_BYTES_PER_PIXEL / 1e9:,.0f} GB); a stack is one grid at most "
            f"{MAX_GRID_EXTENT_M // 1000} km wide: map the AOI as a region with `lczmap predict --aoi {where} --tiles` "
            f"(tile by tile), or stage parts of it")
    return size


def check_region_size(aoi: Geometry, tile_km: float, where: str | Path) -> int:
    """About how many tiles the region's plan holds, from the AOI's bounds alone, logged before the tiles are cut
    (some 10 ms each); more than MAX_REGION_TILES is refused (one LczmapError naming `where`, the AOI file)."""
    size = plan_size(aoi)
    tiles = size.tiles(tile_km)
    if tiles > MAX_REGION_TILES:
        larger = math.ceil(tile_km * math.sqrt(tiles / MAX_REGION_TILES))
        raise LczmapError(f"--aoi {where}: {size.describe()}, about {tiles} tiles of {tile_km:g} km; a region plans at "
                          f"most {MAX_REGION_TILES} tiles: map it in parts (an AOI per part), or in larger tiles "
                          f"(--tile-km {larger})")
    log.info("%s: a region of %s; cutting about %d tiles of %g km", where, size.describe(), tiles, tile_km)
    return tiles


# Plan-time checks of an input's pixels read it on a version of the base grid at most this many pixels across.
SAMPLE_CELLS = 256


def aoi_sample(aoi: Geometry, base: GeoBox) -> tuple[GeoBox, np.ndarray]:
    """A coarse version of `base` (at most SAMPLE_CELLS pixels across) and the AOI's mask on it (every pixel the
    AOI touches), where an input's usable pixels are counted when it is opened."""
    coarse = base.zoom_out(max(1.0, math.ceil(max(base.shape) / SAMPLE_CELLS)))
    mask = rasterize([aoi.to_crs(base.crs).geom], out_shape=coarse.shape, transform=coarse.affine, fill=0,
                     default_value=1, dtype="uint8", all_touched=True) == 1
    return coarse, mask


def usable_share(usable: np.ndarray, aoi: np.ndarray) -> float | None:
    """The share of the `aoi` mask's pixels that are `usable`; None for an empty mask."""
    n = int(aoi.sum())
    return round(int((usable & aoi).sum()) / n, 4) if n else None


# ---- UTM zone strips (a region's tiles lie in one zone each) ----------------------------------------

def zone_parts(aoi: Geometry) -> list[tuple[int, Any, Any]]:
    """(EPSG, the AOI's part in the zone, the zone strip) per UTM zone and hemisphere, all in lon/lat (shapely)."""
    ll = to_lonlat(aoi).geom
    minx, miny, maxx, maxy = ll.bounds
    parts = []
    for k in range(math.floor((minx + 180) / 6), math.floor((maxx + 180) / 6) + 1):
        for base in (32600, 32700):
            epsg = base + k % 60 + 1
            strip = shapely.box(*zone_strip(epsg))
            part = ll.intersection(strip)
            if not part.is_empty and part.area > 0:
                parts.append((epsg, part, strip))
    if not parts:
        raise LczmapError("the AOI lies outside the UTM zones (80 S to 84 N); give a projected --crs for polar regions")
    return parts


def zone_strip(epsg: int) -> tuple[float, float, float, float]:
    """(west, south, east, north) in degrees of the strip a UTM zone's EPSG code (326zz north, 327zz south) stands for."""
    west = -180.0 + 6 * (epsg % 100 - 1)
    south, north = (0.0, 84.0) if epsg < 32700 else (-80.0, 0.0)
    return west, south, west + 6, north


def in_zone_strip(box: Any, epsg: int) -> np.ndarray:
    """(h, w) bool: the cells of GeoBox `box` whose centre lies in the zone's strip (west and south edges included).

    Half-open, so a point on the edge of two strips belongs to one: counting each zone's cells with this
    counts every place once, although tile cores overlap by a cell across a zone edge.
    """
    h, w = box.shape
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x, y = box.affine * (cols, rows)
    lon, lat = Transformer.from_crs(box.crs.to_wkt(), "EPSG:4326", always_xy=True).transform(x, y)
    west, south, east, north = zone_strip(epsg)
    return (lon >= west) & (lon < east) & (lat >= south) & (lat < north)


def to_zone(geom: Any, epsg: int) -> Any:
    """A lon/lat shapely geometry in the zone's CRS; edges densified first, as meridians and parallels curve in UTM."""
    return Geometry(shapely.segmentize(geom, 0.01), "EPSG:4326").to_crs(f"EPSG:{epsg}").geom


def zone_to_lonlat(geom: Any, epsg: int) -> Any:
    """A shapely geometry in the zone's CRS in lon/lat; edges densified first."""
    return to_lonlat(Geometry(shapely.segmentize(geom, 500.0), f"EPSG:{epsg}")).geom
