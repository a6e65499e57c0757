"""Derive a city's processing grids from its AOI: a 10 m base grid and an aligned output grid in the AOI's UTM zone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely
from affine import Affine
from odc.geo.crs import CRS
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry
from rasterio.features import rasterize

from .errors import LczmapError

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
    f = round(factor)
    base_affine = output.affine @ Affine.scale(1 / f)
    halo = math.ceil(patch / 2)
    base = GeoBox((output.shape[0] * f, output.shape[1] * f), base_affine, target).pad(halo)
    return CityGrid(aoi=local, output=output, base=base, halo=halo)
