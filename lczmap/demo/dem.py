"""Write the demo city's DSM (terrain plus buildings and trees) and DTM (terrain) as EPSG:4326 1-arcsecond GeoTIFFs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.warp import Resampling, reproject, transform_bounds
from scipy.ndimage import gaussian_filter

from .layout import Layout
from .sentinel2_safe import S2Products

ARCSEC = 1.0 / 3600.0
DEM_NODATA = -9999.0


def geographic_grid(products: S2Products, resolution: float) -> tuple[Affine, tuple[int, int]]:
    """An EPSG:4326 grid at `resolution` degrees, pixel edges on multiples of it, covering the Sentinel-2 extent."""
    g = products.grid
    left, top = g.transform.c, g.transform.f
    right, bottom = left + g.cols * g.transform.a, top + g.rows * g.transform.e
    w, s, e, n = transform_bounds(g.crs, "EPSG:4326", left, bottom, right, top)
    w, s = math.floor(w / resolution) * resolution, math.floor(s / resolution) * resolution
    e, n = math.ceil(e / resolution) * resolution, math.ceil(n / resolution) * resolution
    shape = (round((n - s) / resolution), round((e - w) / resolution))
    return Affine(resolution, 0, w, 0, -resolution, n), shape


def write_dems(dsm_path: Path, dtm_path: Path, layout: Layout, products: S2Products, rng: np.random.Generator,
               noise_m: float) -> None:
    """DTM = terrain spline; DSM = DTM + mean surface height of each pixel + smooth sensor noise (AW3D30-like)."""
    transform, shape = geographic_grid(products, ARCSEC)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    lon, lat = transform * (cols, rows)
    x, y = Transformer.from_crs("EPSG:4326", products.grid.crs, always_xy=True).transform(lon, lat)
    dtm = layout.terrain_at(x, y)
    above = np.zeros(shape, np.float32)
    reproject(
        products.height10, above, src_transform=products.grid.transform, src_crs=products.grid.crs,
        dst_transform=transform, dst_crs="EPSG:4326", resampling=Resampling.average,
    )
    err = gaussian_filter(rng.standard_normal(shape).astype(np.float32), 0.7)
    dsm = dtm + above + err / (err.std() + 1e-9) * noise_m
    for path, data in ((dsm_path, dsm), (dtm_path, dtm)):
        _write(path, data.astype(np.float32), transform)


def _write(path: Path, data: np.ndarray, transform: Affine) -> None:
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype="float32",
        crs="EPSG:4326", transform=transform, nodata=DEM_NODATA, compress="deflate", predictor=3, tiled=True,
    ) as dst:
        dst.write(data, 1)
        dst.set_band_description(1, "elevation")
