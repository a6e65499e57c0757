"""Very-high-resolution RGB imagery (DF4LCZ's second stream), read at its own resolution as one patch per output cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from rasterio.enums import Resampling

from ..errors import LczmapError
from ..grid import CityGrid
from .base import RasterInfo, Source, check_overlap, inspect_raster, warp

DEFAULT_PATCH = 32  # DF4LCZ pairs a 32 x 32 Sentinel-2 patch (320 m) with the image of the same footprint


class VhrSource(Source):
    """An 8-bit RGB raster, checked once; it fills no stack band (DF4LCZ reads it per cell with read_vhr_window)."""

    key = "vhr"
    bands = ()

    def __init__(self, info: RasterInfo):
        self.info = info

    def read(self, geobox: GeoBox, extras: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return np.empty((0, *geobox.shape), dtype="float32")

    def describe(self) -> dict[str, Any]:
        return {"path": self.info.href, "crs": self.info.crs_label, "resolution_m": round(self.info.res_m, 3), "in_stack": False}


def open_vhr(path: str | Path, aoi: Geometry) -> VhrSource:
    """Check a VHR image once: a georeferenced raster with at least 3 bands of 8-bit RGB that overlaps the AOI."""
    info = inspect_raster(path, "VHR image")
    if info.count < 3 or info.dtype != "uint8":
        raise LczmapError(f"{path}: VHR image must be 8-bit RGB (3+ bands of uint8), found {info.count} band(s) of {info.dtype}")
    check_overlap(info, aoi, "VHR image")
    return VhrSource(info)


def read_vhr_window(
    path: str | Path | VhrSource, grid: CityGrid, rows: slice, cols: slice, patch: int = DEFAULT_PATCH
) -> np.ndarray:
    """uint8 (N, h, w, 3) RGB patches, one per output cell of `rows` x `cols` (row-major), at the image's resolution.

    Each patch covers the footprint of the cell's `patch` x `patch` base-pixel window (grid.window), on a
    grid-aligned raster whose pixel size is the base pixel divided by an integer close to the image's own
    resolution (a 2 m image under a 10 m base grid: 5 pixels per base pixel). Uncovered pixels are 0.
    """
    source = path if isinstance(path, VhrSource) else open_vhr(path, grid.aoi)
    base_res = abs(grid.base.resolution.x)
    k = max(1, round(base_res / source.info.res_m))
    r, c = grid.window(rows, cols, patch)
    block = grid.base[r, c]
    fine = GeoBox((block.shape[0] * k, block.shape[1] * k), block.affine @ Affine.scale(1 / k), block.crs)
    rgb = warp(source.info.href, [1, 2, 3], fine, Resampling.bilinear, "uint8", dst_nodata=0)
    step, size = grid.factor * k, patch * k
    out = np.empty(((rows.stop - rows.start) * (cols.stop - cols.start), size, size, 3), dtype="uint8")
    n = 0
    for i in range(rows.stop - rows.start):
        for j in range(cols.stop - cols.start):
            out[n] = rgb[:, i * step: i * step + size, j * step: j * step + size].transpose(1, 2, 0)
            n += 1
    return out
